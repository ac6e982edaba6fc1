"""`llama2 annotate`: the paper's preference collection (§3.2.1) as a web page on Ray Serve.

    store.py        the ratings file preferences_v{k} reads: appended, locked, fsynced
    annotators.py   who may rate: per-annotator tokens, kept by their digests
    assignments.py  which pair an annotator rates next; the share rated twice
    statistics.py   progress, rating distribution, agreement
    pages.py        the HTML pages
    app.py          the routes (login, rate, statistics)
    deployment.py   the Serve deployment
"""
