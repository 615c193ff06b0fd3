"""Render the Kubernetes overlays in ``deploy/kubernetes`` and validate them offline against Kubernetes' schemas.

Rendering covers the subset of kustomize the overlays use (resources, labels without selectors, images, JSON 6902
patches with a target), so that the manifests can be checked where no ``kubectl`` / ``kustomize`` is installed;
the tests compare it with ``kubectl kustomize`` where that exists. Validation uses the JSON schemas that ship in
the ``kubernetes-validate`` wheel (strict: unknown fields are errors), for several Kubernetes versions.

Examples::

    python -m deploy.manifests render gpu            # the GPU overlay as YAML (kubectl apply -f - ready)
    python -m deploy.manifests validate              # every overlay and extra, Kubernetes 1.27 and 1.33
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent / "kubernetes"
OVERLAYS = ("gpu", "cpu")
# Standalone manifests outside the overlays (applied on their own).
EXTRAS = ("extras/ingress-grpc.yaml", "monitoring/prometheus-adapter-rules.yaml")
K8S_VERSIONS = ("1.27.0", "1.33.0")

Document = dict[str, Any]


def load_yaml(path: Path) -> list[Any]:
    import yaml

    with open(path) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


# ------------------------------------------------------------------------------------------------ JSON patch
def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def apply_json_patch(doc: Document, operations: list[dict[str, Any]]) -> Document:
    """RFC 6902 ``add``, ``replace`` and ``remove`` (what the overlays use) applied to a copy of ``doc``."""
    doc = copy.deepcopy(doc)
    for op in operations:
        *parents, last = _pointer(op["path"])
        target: Any = doc
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        kind = op["op"]
        if kind not in ("add", "replace", "remove"):
            raise ValueError(f"unsupported JSON patch op {kind!r}; use add, replace or remove")
        if isinstance(target, list):
            if kind == "add":
                target.insert(len(target) if last == "-" else int(last), copy.deepcopy(op["value"]))
            elif kind == "replace":
                target[int(last)] = copy.deepcopy(op["value"])
            else:
                del target[int(last)]
        else:
            if kind in ("replace", "remove") and last not in target:
                raise KeyError(f"{op['path']} does not exist for {kind}")
            if kind == "remove":
                del target[last]
            else:
                target[last] = copy.deepcopy(op["value"])
    return doc


# ------------------------------------------------------------------------------------------------ kustomize subset
def _matches(doc: Document, target: dict[str, str]) -> bool:
    group, _, version = doc.get("apiVersion", "").rpartition("/")
    checks = {"group": group, "version": version, "kind": doc.get("kind"), "name": doc.get("metadata", {}).get("name")}
    return all(checks[key] == value for key, value in target.items() if key in checks)


def _pod_specs(doc: Document) -> list[Document]:
    spec = doc.get("spec", {})
    if doc.get("kind") == "Pod":
        return [spec]
    template = spec.get("template", {}).get("spec")
    return [template] if template else []


def _set_images(doc: Document, images: list[dict[str, str]]) -> None:
    for pod in _pod_specs(doc):
        for container in pod.get("containers", []) + pod.get("initContainers", []):
            name, tag = container["image"], None
            if ":" in name.rsplit("/", 1)[-1]:
                name, tag = name.rsplit(":", 1)
            for image in images:
                if image["name"] == name:
                    new_tag = image.get("newTag", tag)
                    container["image"] = image.get("newName", name) + (f":{new_tag}" if new_tag else "")


def render(directory: Path | str) -> list[Document]:
    """The documents ``kustomize build DIRECTORY`` gives, for the kustomize features these manifests use.

    Raises:
        ValueError: the kustomization uses a feature this renderer does not implement.
    """
    directory = Path(directory)
    kustomization = load_yaml(directory / "kustomization.yaml")[0]
    supported = {"apiVersion", "kind", "resources", "labels", "images", "patches"}
    unknown = set(kustomization) - supported
    if unknown:
        raise ValueError(
            f"{directory}: kustomization fields {sorted(unknown)} are not supported here; "
            f"supported: {sorted(supported)} (use kubectl kustomize)"
        )
    docs: list[Document] = []
    for resource in kustomization.get("resources", []):
        path = directory / resource
        docs += render(path) if path.is_dir() else load_yaml(path)
    for patch in kustomization.get("patches", []):
        if "target" not in patch or "path" not in patch:
            raise ValueError(f"{directory}: only JSON 6902 patches given by path and target are supported")
        operations = load_yaml(directory / patch["path"])[0]
        docs = [apply_json_patch(d, operations) if _matches(d, patch["target"]) else d for d in docs]
    for doc in docs:
        _set_images(doc, kustomization.get("images", []))
        for label in kustomization.get("labels", []):
            if label.get("includeSelectors") or label.get("includeTemplates"):
                raise ValueError(f"{directory}: labels with includeSelectors/includeTemplates are not supported")
            doc.setdefault("metadata", {}).setdefault("labels", {}).update(label["pairs"])
    return docs


def overlay(name: str) -> list[Document]:
    if name not in OVERLAYS:
        raise ValueError(f"unknown overlay {name!r}; valid: {', '.join(OVERLAYS)}")
    return render(ROOT / "overlays" / name)


# ------------------------------------------------------------------------------------------------ validation
def validate(docs: list[Document], version: str) -> list[str]:
    """Schema errors of ``docs`` for Kubernetes ``version`` (strict: unknown fields too); empty when valid."""
    import kubernetes_validate

    errors = []
    for doc in docs:
        where = f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{where} (k8s {version}): {exc.message} at {'/'.join(map(str, exc.path))}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            errors.append(f"{where} (k8s {version}): no schema: {exc}")
    return errors


def all_documents() -> dict[str, list[Document]]:
    """Every manifest set to validate: each overlay rendered, and each extra file."""
    out = {f"overlays/{name}": overlay(name) for name in OVERLAYS}
    out.update({extra: load_yaml(ROOT / extra) for extra in EXTRAS})
    return out


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    verbs = p.add_subparsers(dest="verb", required=True)
    r = verbs.add_parser("render", help="print an overlay as YAML")
    r.add_argument("overlay", choices=OVERLAYS)
    v = verbs.add_parser("validate", help="validate every overlay and extra against the Kubernetes schemas")
    v.add_argument("--k8s-versions", default=",".join(K8S_VERSIONS), help="comma-separated Kubernetes versions")
    return p


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    if args.verb == "render":
        import yaml

        print(yaml.safe_dump_all(overlay(args.overlay), sort_keys=False), end="")
        return 0
    failed = 0
    for name, docs in all_documents().items():
        for version in [v.strip() for v in args.k8s_versions.split(",") if v.strip()]:
            errors = validate(docs, version)
            failed += len(errors)
            print(f"{name:<45} k8s {version:<8} {len(docs)} documents: {'ok' if not errors else 'INVALID'}")
            for error in errors:
                print(f"  {error}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
