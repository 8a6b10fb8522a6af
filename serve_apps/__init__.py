"""Ray Serve wiring of VLM-3R: ``serve run serve_apps:vlm3r`` serves the ``tiny`` preset.

``vlm3r`` is ``build_app(Vlm3rArgs())``, built on first access: importing this package imports
neither Ray nor torch. Other models: ``serve run serve_apps.app:build_app model=<folder or URI>``.
"""


def __getattr__(name: str):
    if name == "vlm3r":
        from serve_apps.app import build_app
        from serve_apps.args import Vlm3rArgs

        return build_app(Vlm3rArgs())
    raise AttributeError(f"module 'serve_apps' has no attribute {name!r}")
