"""Triton's HTTP endpoint as a supervisor uses it: readiness and liveness, model control, statistics."""

from __future__ import annotations

import json
import urllib.error
import urllib.request


class AdminClient:
    """Plain HTTP calls to one tritonserver (``host:port`` of its HTTP endpoint); ``headers`` go with every call
    (the restricted APIs' key)."""

    def __init__(self, http_url: str, headers: dict[str, str] | None = None) -> None:
        self.http_url = http_url
        self.headers = dict(headers or {})

    def request(
        self, method: str, path: str, timeout_s: float = 2.0, headers: dict[str, str] | None = None
    ) -> tuple[int, str]:
        """Status code and body of one request (status 0: no answer; the body then says why)."""
        request = urllib.request.Request(
            f"http://{self.http_url}{path}",
            method=method,
            headers={**self.headers, **(headers or {})},
            data=b"" if method == "POST" else None,
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                return response.status, response.read().decode(errors="replace")
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode(errors="replace")
        except (urllib.error.URLError, OSError) as exc:
            return 0, str(exc)

    def is_ready(self, timeout_s: float = 2.0) -> bool:
        """Server ready and every model ready."""
        return self.request("GET", "/v2/health/ready", timeout_s)[0] == 200

    def is_live(self, timeout_s: float = 2.0) -> bool:
        return self.request("GET", "/v2/health/live", timeout_s)[0] == 200

    def model_control(self, model: str, action: str, timeout_s: float = 300.0) -> tuple[int, str]:
        """``load`` or ``unload`` ``model`` through the repository API; status and body."""
        return self.request("POST", f"/v2/repository/models/{model}/{action}", timeout_s)

    def model_statistics(self, timeout_s: float = 2.0) -> list[dict] | None:
        """The statistics API's ``model_stats`` (every model and version), or None when the server does not answer."""
        status, body = self.request("GET", "/v2/models/stats", timeout_s)
        if status != 200:
            return None
        return json.loads(body).get("model_stats", [])
