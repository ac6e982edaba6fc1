"""The `evaluate` stage: held-out perplexity, zero-shot multiple choice by log-likelihood, samples."""
