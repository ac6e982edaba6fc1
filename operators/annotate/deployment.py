"""The Ray Serve deployment behind `llama2 annotate`: one replica (the round's assignments live in it),
placed on the node the command runs on, where the candidates were read from and the ratings file is
written: the file an annotator's "saved" refers to is the one `preferences_v{k}` will read there."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from ray import serve
from ray.serve import Application

# Annotators post a rating at a time; a few dozen at once is a large team.
MAX_ONGOING_REQUESTS = 64


class AnnotateConfig(BaseModel):
    """What `llama2 annotate` serves: round k's candidates, its ratings file and who may rate."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    round: int = Field(ge=1, description="The RLHF round whose candidates are rated.")
    candidates_dir: Path = Field(description="preference_candidates_v{k}'s candidates/ folder.")
    ratings: Path = Field(description="The ratings file preferences_v{k} reads (JSON lines, appended).")
    annotators: Path = Field(description="Who may rate: name -> SHA-256 of their token.")
    double_share: float = Field(0.1, ge=0, le=1, description="Share of candidates rated by two annotators.")
    seed: int = Field(0, description="Seeds the order candidates are offered in and which are rated twice.")
    hold_seconds: float = Field(900, gt=0, description="How long a pair shown to one annotator is kept from others.")
    node_ip: str = Field(description="The node the replica runs on (where the files are).")


@serve.deployment(max_ongoing_requests=MAX_ONGOING_REQUESTS)
@serve.ingress()
class AnnotationServer:
    def __init__(self, config: AnnotateConfig):
        from operators.annotate.app import load_round

        self.session = load_round(config.round, config.candidates_dir, config.ratings, config.annotators,
                                  config.double_share, config.seed, config.hold_seconds)

    def __serve_build_asgi_app__(self):
        from operators.annotate.app import annotation_app

        return annotation_app(self.session)


def annotation_application(config: AnnotateConfig) -> Application:
    """The application to run with ``serve.run`` (infra/serving.py): one replica on ``config.node_ip``."""
    return AnnotationServer.options(
        num_replicas=1, ray_actor_options={"num_cpus": 0, "resources": {f"node:{config.node_ip}": 0.001}},
    ).bind(config)
