"""Where each party's material comes from: the live dealer, or files dealt ahead.

``mpcc dealer PLAN --out DIR --runs N`` deals one deployment's material for N
runs into ``DIR/client`` and ``DIR/server``; each party gets only its own
directory (its seed, and its share of each run's material, one file per
label). A party claims a label's file by renaming it before it reads it, so
a label is used once even across restarts and concurrent sessions; a label
the other side no longer has ends that run, and the next run takes the next
label. A deployment dealt to files serves one client (it holds one client
seed); the client's hello names its deployment id, and the server refuses any
other.
"""
from __future__ import annotations

import json
import os
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from ..runtime.dealer import Dealer, DealtMaterial, MaterialFileError
from .dealer_service import DEAL_WAIT, DealerLink

__all__ = ["deal_to_files", "LiveServerMaterial", "FileMaterial", "LiveClientMaterial", "MaterialGone"]

ROLE_DIRS = ("client", "server")
DEPLOYMENT_FILE = "deployment.json"
LABEL = re.compile(r"[0-9a-f]{32}")   # what ``fresh_label`` makes: no path or pattern characters


class MaterialGone(ConnectionError):
    """No pre-dealt material left for this deployment (or a label was used up on one side)."""


def deal_to_files(plan, out: str | Path, runs: int, *, progress=None) -> tuple[str, Path]:
    """One new deployment of ``plan`` and ``runs`` runs' material, into ``out/client`` and
    ``out/server``; returns (deployment id, out). ``progress(i)`` after each run's material."""
    if runs < 1:
        raise ValueError(f"runs must be at least 1, not {runs}")
    out = Path(out)
    if any((out / role).exists() for role in ROLE_DIRS):
        raise FileExistsError(f"{out} already holds a client or server directory; deal into a new one")
    dealer = Dealer(plan)
    for party, role in enumerate(ROLE_DIRS):
        (out / role).mkdir(parents=True, mode=0o700)
        about = {"plan": plan.hash, "deployment": dealer.deployment, "party": party,
                 "seed": dealer.seed_for(party).hex()}
        handle = os.open(out / role / DEPLOYMENT_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(handle, "w") as file:
            json.dump(about, file)
    for index in range(runs):
        material = dealer.deal()
        for party, role in enumerate(ROLE_DIRS):
            material.save(party, out / role / f"{index:06d}-{material.inference}.safetensors")
        if progress is not None:
            progress(index)
    return dealer.deployment, out


class FileMaterial:
    """One party's directory from ``deal_to_files``: its deployment, its seed, its shares."""

    def __init__(self, directory: str | Path, plan, party: int):
        self.directory, self.plan, self.party = Path(directory), plan, party
        path = self.directory / DEPLOYMENT_FILE
        try:
            about = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise MaterialFileError(f"{path}: not a dealt deployment ({error}); make one with "
                                    f"`mpcc dealer PLAN --out DIR --runs N`") from None
        if about.get("plan") != plan.hash or about.get("party") != party:
            holder = {0: "client", 1: "server"}.get(about.get("party"), "?")
            raise MaterialFileError(f"{self.directory} holds material of plan {str(about.get('plan'))[:12]} for the "
                                    f"{holder}; this is plan {plan.hash[:12]}, the {ROLE_DIRS[party]}")
        self.deployment = str(about["deployment"])
        self.seed = bytes.fromhex(about["seed"])

    def _files(self) -> dict[str, Path]:
        """Label -> its file, for the labels not yet used on this side, in dealing order."""
        files = {}
        for path in sorted(self.directory.iterdir()):
            stem, dash, label = path.name.removesuffix(".safetensors").partition("-")
            if path.name.endswith(".safetensors") and dash and stem.isdigit() and LABEL.fullmatch(label):
                files[label] = path
        return files

    def labels(self) -> list[str]:
        return list(self._files())

    def _claim(self, label: str) -> dict:
        """Rename the label's file away (atomically: one claimant), read it, delete it."""
        if not isinstance(label, str) or not LABEL.fullmatch(label):
            raise MaterialGone(f"{str(label)[:40]!r} is not a dealt label")
        path = self._files().get(label)
        if path is None:
            raise MaterialGone(f"material {label[:12]!r} is not in {self.directory} (used before, or never dealt)")
        claimed = path.with_suffix(f".claimed-{os.getpid()}")
        try:
            os.rename(path, claimed)
        except FileNotFoundError:
            raise MaterialGone(f"material {label[:12]!r} was just claimed by another session") from None
        try:
            (got, deployment), stored = DealtMaterial.load_party(claimed, self.plan.hash, self.party)
        finally:
            claimed.unlink(missing_ok=True)   # used or damaged: never read again
        if (got, deployment) != (label, self.deployment):
            raise MaterialFileError(f"{path.name}: material {got[:12]!r} of deployment {deployment[:12]}, "
                                    f"expected {label[:12]!r} of {self.deployment[:12]}")
        return stored

    # the server's face: it picks the next label
    def take(self) -> tuple[str, dict]:
        for label in self.labels():
            try:
                return label, self._claim(label)
            except MaterialGone:
                continue   # another session took it first
        raise MaterialGone(f"no pre-dealt material left in {self.directory}; deal more runs into a new "
                           f"deployment (mpcc dealer PLAN --out DIR --runs N)")

    # the client's face: the server names the label
    def take_label(self, label: str) -> dict:
        return self._claim(label)

    def close(self) -> None:
        pass


class LiveServerMaterial:
    """The server's side of a live dealer: a new deployment, one dealing kept ahead (the next
    run's material is dealt and fetched while this run goes on and while the client is idle)."""

    def __init__(self, address, certs, plan, timeout: float):
        self.link = DealerLink(address, certs, "server", plan, timeout)
        self.timeout = timeout
        try:
            self.deployment, self.seed, self.token = self.link.deploy()
        except BaseException:
            self.link.close()
            raise
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="mpcc-deal-ahead")
        self.next = self.pool.submit(self.link.deal, self.deployment)

    def take(self) -> tuple[str, dict]:
        label, stored = self.next.result(DEAL_WAIT + self.timeout)
        self.next = self.pool.submit(self.link.deal, self.deployment)
        return label, stored

    def close(self) -> None:
        self.link.close()   # also ends a dealing still in flight
        self.pool.shutdown(wait=True, cancel_futures=True)


class LiveClientMaterial:
    """The client's side of a live dealer: it joins the server's deployment with the server's token."""

    def __init__(self, address, certs, plan, deployment: str, token: str, timeout: float):
        self.link = DealerLink(address, certs, "client", plan, timeout)
        self.deployment = deployment
        try:
            self.seed = self.link.join(deployment, token)
        except BaseException:
            self.link.close()
            raise

    def take_label(self, label: str) -> dict:
        return self.link.take(self.deployment, label)

    def close(self) -> None:
        self.link.close()
