"""The Kubernetes manifests under deploy/kubernetes, built like ``kubectl kustomize`` for the
parts of kustomize they use (resources, namespace, images, strategic-merge patches of
containers by name), so the tests see what a cluster would receive. No cluster, no kubectl."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import yaml

from tests.support import ROOT

KUBERNETES = ROOT / "deploy" / "kubernetes"
OVERLAYS = ("cpu", "gpu")
#: the Kubernetes version the manifests are validated against (kubernetes-validate's schemas)
KUBE_VERSION = "1.32"


def load_documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def merge(base: Any, patch: Any) -> Any:
    """Strategic merge as kustomize applies it here: maps merge, lists of named maps merge by
    ``name``, anything else is replaced."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for key, value in patch.items():
            out[key] = merge(base[key], value) if key in base else copy.deepcopy(value)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch
            and all(isinstance(x, dict) and "name" in x for x in [*base, *patch])):
        merged = [copy.deepcopy(x) for x in base]
        for item in patch:
            match = next((i for i, x in enumerate(merged) if x["name"] == item["name"]), None)
            if match is None:
                merged.append(copy.deepcopy(item))
            else:
                merged[match] = merge(merged[match], item)
        return merged
    return copy.deepcopy(patch)


def build(folder: Path) -> list[dict[str, Any]]:
    """The documents ``kubectl kustomize folder`` would print (for the features used here)."""
    spec = load_documents(folder / "kustomization.yaml")[0]
    docs: list[dict[str, Any]] = []
    for resource in spec.get("resources", []):
        path = folder / resource
        docs += build(path) if path.is_dir() else load_documents(path)
    for patch in spec.get("patches", []):
        for change in load_documents(folder / patch["path"]):
            target = next(d for d in docs if d["kind"] == change["kind"]
                          and d["metadata"]["name"] == change["metadata"]["name"])
            docs[docs.index(target)] = merge(target, change)
    for image in spec.get("images", []):
        for container in containers(docs):
            if container["image"].split(":")[0] == image["name"]:
                container["image"] = f"{image.get('newName', image['name'])}:{image['newTag']}"
    for doc in docs:
        if "namespace" in spec and doc["kind"] != "Namespace":
            doc["metadata"]["namespace"] = spec["namespace"]
        for labels in spec.get("labels", []):
            doc["metadata"].setdefault("labels", {}).update(labels["pairs"])
    return docs


def pod_spec(doc: dict[str, Any]) -> dict[str, Any] | None:
    spec = doc.get("spec", {})
    if doc["kind"] == "Job" or "template" in spec:
        return spec["template"]["spec"]  # type: ignore[no-any-return]
    return None


def containers(docs: list[dict[str, Any]], *, init: bool = True) -> list[dict[str, Any]]:
    found = []
    for doc in docs:
        pod = pod_spec(doc)
        if pod is not None:
            found += pod.get("containers", [])
            if init:
                found += pod.get("initContainers", [])
    return found


def expand_env(args: list[str], env: dict[str, str]) -> list[str]:
    """Kubernetes' ``$(NAME)`` expansion of container args."""
    return [re.sub(r"\$\((\w+)\)", lambda m: env.get(m.group(1), m.group(0)), a) for a in args]
