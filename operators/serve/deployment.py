"""The Ray Serve deployment behind `llama2 serve`: each replica a Ray actor holding one copy of the model
and answering over HTTP (routes.py), as many replicas as asked, each with its CPUs and GPUs.

Every replica loads the model from the same directory, as the evaluation actors do: on a cluster,
storage every node sees (the stage store), or a directory that is on each node.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

from model.chat_template import ChatTemplate

# Requests a replica accepts at once; Serve's router keeps the rest and sends each to the least busy
# replica. The replica answers one at a time (turns.py), so more would only queue there, out of reach
# of a replica that frees up; a few keep /v1/models and refusals quick while an answer is written.
MAX_ONGOING_REQUESTS = 4


class ServeConfig(BaseModel):
    """What `llama2 serve` deploys: the model, its name and chat template, the replicas and their resources."""

    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True, protected_namespaces=())

    model_dir: Path = Field(description="A Hugging Face model directory every replica can read.")
    model_name: str = Field(min_length=1, description="The model's id in /v1/models, which requests must name.")
    template: ChatTemplate | None = Field(
        None, description="The chat template chats are rendered with (None: the Llama 2 chat format).")
    replicas: int = Field(1, ge=1, description="Copies of the model, each a Ray actor answering requests.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs per replica (its torch threads: the whole part, >= 1).")
    num_gpus: float = Field(0.0, ge=0, description="GPUs per replica; above 0 the replica's model is on its GPU.")
    max_prompt_tokens: int | None = Field(
        None, ge=1, description="Longest prompt accepted, in tokens (None, or more: the model's context less one).")
    api_key_sha256: str | None = Field(
        None, pattern="^[0-9a-f]{64}$", description="SHA-256 of the bearer token requests must carry (None: none).")


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress()
class OpenAIServer:
    def __init__(self, config: ServeConfig):
        import torch

        from operators.serve.engine import ServedModel
        from operators.serve.turns import Turns

        torch.seed()  # each replica its own unseeded samples (torch's default seed is a constant)
        device = "cuda" if config.num_gpus > 0 and torch.cuda.is_available() else "cpu"
        model = ServedModel(config.model_dir, config.template, config.max_prompt_tokens, device)
        self.config = config
        self.turns = Turns(model, threads=max(1, int(config.num_cpus)))

    def __serve_build_asgi_app__(self):
        """Serve asks for the app once the model is loaded (routes.py builds it around this replica's model)."""
        from operators.serve.routes import openai_app

        return openai_app(self.turns, self.config.model_name, self.config.api_key_sha256)


def openai_application(config: ServeConfig) -> Application:
    """The application to run with ``serve.run`` (infra/serving.py)."""
    return OpenAIServer.options(
        num_replicas=config.replicas, ray_actor_options={"num_cpus": config.num_cpus, "num_gpus": config.num_gpus},
    ).bind(config)
