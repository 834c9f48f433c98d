"""`fedmom push RUN_DIR --repo ID`: share a run's export on the Hugging Face Hub, with its card.

The export (merged model by default, or `--adapter-only`) is written to a temporary folder with
`fedmom_cli.export.export` and uploaded with `huggingface_hub.HfApi.upload_folder` (one commit).
Offline (HF_HUB_OFFLINE=1, no token, or no connection) it fails in one line before exporting.

Into an existing repository, a push deletes only files fedmom uploaded itself: the `files` list of
the repository's `fedmom_export.json` (the manifest every export carries) names what the earlier push
uploaded, and only those the new upload lacks are deleted. A file fedmom did not upload is never
deleted, and one at a name the new upload needs (a README.md of the user's) stops the push in one
line before anything is uploaded.
"""

from __future__ import annotations

import glob
import json
import re
import tempfile
from pathlib import Path

from fedmom_cli.errors import UserError

REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _check_online():
    from fedmom_cli.data import offline_vars

    if names := offline_vars():  # name the one set (review F09 set HF_DATASETS_OFFLINE only)
        verb = "is" if len(names) == 1 else "are"
        raise UserError(f"{' and '.join(names)} {verb} set: cannot push to the Hugging Face Hub offline")
    from huggingface_hub import HfApi, get_token

    if not get_token():
        raise UserError("no Hugging Face token: run `hf auth login` or set HF_TOKEN, then push again")
    api = HfApi()
    try:
        api.whoami()
    except Exception as exc:  # noqa: BLE001 - connection, auth: all mean "cannot push now"
        raise UserError(
            f"cannot reach the Hugging Face Hub ({type(exc).__name__}): {str(exc)[:160]}"
        ) from None
    return api


def push(run_dir: Path, repo: str, private: bool = False, adapter_only: bool = False) -> str:
    from fedmom_cli import export

    if not REPO_ID.match(repo):
        raise UserError(f"--repo must look like OWNER/NAME, got {repo!r}")
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:  # the Hub's own rules: no "..", "--", ".git" ending, 96 characters at most (review H08, H12, H13)
        validate_repo_id(repo)
    except HFValidationError as exc:
        raise UserError(f"--repo must look like OWNER/NAME, got {repo!r} ({exc})") from None
    export.read_run(run_dir)  # a finished run, before anything else
    api = _check_online()
    with tempfile.TemporaryDirectory(prefix="fedmom-push-") as tmp:
        out = Path(tmp) / "export"
        info = export.export(
            run_dir, out, adapter_only=adapter_only, with_base_delta=adapter_only, public=True
        )  # public: fedmom_export.json names the run without a path of this machine
        api.create_repo(repo, private=private, exist_ok=True)
        if private and not getattr(api.repo_info(repo), "private", True):
            raise UserError(f"{repo} exists and is public; --private will not upload into it")
        stale = stale_files(api, repo, export.export_files(out) or [])
        commit = api.upload_folder(
            folder_path=str(out),
            repo_id=repo,
            commit_message=f"fedmom export: {info['method']} on {info['task']} ({info['kind']})",
            # exact names (escaped: fnmatch patterns), only files an earlier push uploaded
            delete_patterns=[glob.escape(f) for f in stale] or None,
        )
    return getattr(commit, "commit_url", None) or f"https://huggingface.co/{repo}"


def stale_files(api, repo: str, new: list[str]) -> list[str]:
    """What an earlier fedmom push uploaded to `repo` (its manifest) that this upload (`new`) lacks;
    a file fedmom did not upload at a name this upload needs is a UserError."""
    from fedmom_cli.export import MARKER

    remote = set(api.list_repo_files(repo))
    earlier: set[str] = set()
    if MARKER in remote:
        try:
            data = json.loads(Path(api.hf_hub_download(repo_id=repo, filename=MARKER)).read_text())
        except (OSError, ValueError):
            data = None
        files = data.get("files") if isinstance(data, dict) else None
        if isinstance(files, list) and all(isinstance(f, str) for f in files):
            earlier = set(files) & remote
    clash = sorted((set(new) & remote) - earlier)
    if clash:
        raise UserError(
            f"{repo} holds {clash[0]}, which fedmom did not upload there and this push would replace; "
            "push into another repository, or remove it there first"
        )
    return sorted(earlier - set(new))
