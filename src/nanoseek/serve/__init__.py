"""`nanoseek serve`: an OpenAI/DeepSeek-compatible HTTP server (FastAPI + uvicorn) over one inference engine,
with a chat page at `/`, /health and Prometheus /metrics."""
from .app import create_app, default_model_name, run_server
from .config import ServeConfig
from .metrics import Metrics
from .protocol import APIError
from .worker import EngineWorker, RequestHandle

__all__ = ["ServeConfig", "create_app", "run_server", "default_model_name", "Metrics", "APIError", "EngineWorker",
           "RequestHandle"]
