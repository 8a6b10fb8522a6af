"""The VLM-3R Serve application: ``build_app(Vlm3rArgs) -> Application``.

Three deployments composed through ``DeploymentHandle``s::

    HTTP ──► Vlm3rIngress (FastAPI, OpenAI format) ──► GeometryEncoder (decode + SigLIP + CUT3R, token cache)
                                                  └──► LanguageModel  (fusion + projector + LLM)

Run it::

    serve run serve_apps:vlm3r                                         # the tiny preset, on a laptop
    serve run serve_apps.app:build_app model=./vlm3r-data/runs/tiny/model  # a model from jobs/train.py
    serve run serve_apps/config/vlm3r-gpu.yaml                         # a GPU cluster (edit model / bucket)
    serve build serve_apps:vlm3r -o serve_config.yaml                  # the defaults, as a config to edit

Each deployment carries its own ``autoscaling_config`` and ``ray_actor_options`` (fractional CPUs
by default; the YAML in ``serve_apps/config/`` gives the model deployments a GPU each). API keys
come from ``api_keys`` or the ``VLM3R_API_KEYS`` environment variable of the ingress replicas.
"""

from ray.serve import Application

from serve_apps.api import Vlm3rIngress
from serve_apps.args import Vlm3rArgs
from serve_apps.deployments import GeometryEncoder, LanguageModel

# No ``from __future__ import annotations`` here: Serve reads ``build_app``'s annotation as a class
# to turn ``key=value`` arguments into ``Vlm3rArgs``.


def build_app(args: Vlm3rArgs) -> Application:
    """The bound application graph: ingress -> (GeometryEncoder, LanguageModel).

    The model deployments take ``args.max_queued_requests`` as Serve's ``max_queued_requests``: a
    request past it is refused at once (429 with Retry-After) instead of waiting in an unbounded queue.
    """
    queue = dict(max_queued_requests=args.max_queued_requests)
    return Vlm3rIngress.bind(
        args, GeometryEncoder.options(**queue).bind(args), LanguageModel.options(**queue).bind(args)
    )
