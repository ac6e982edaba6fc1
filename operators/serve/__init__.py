"""`llama2 serve`: a model behind an OpenAI-compatible HTTP API, as a Ray Serve application.

    protocol.py    the OpenAI requests (pydantic), their responses and stream chunks, the error shape
    stops.py       text as it streams, cut before the first stop sequence
    engine.py      one model answering one request at a time: prompts, limits, decoding, usage
    routes.py      the FastAPI app: /v1/models, /v1/completions, /v1/chat/completions, bearer token, errors
    deployment.py  the Ray Serve deployment holding the model (`ServeConfig`, `openai_application`)

Starting Ray Serve on an address and port, and stopping it, is infra/serving.py's; the command is
pipelines/cli/serve.py.
"""
