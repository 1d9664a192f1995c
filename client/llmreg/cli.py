"""``llmreg``: the registry from the shell.

Every command takes ``--output json`` (``-o json``; or ``LLMREG_OUTPUT=json``) for scripts: the
server's documents on standard output, errors as ``{"error": problem}`` on standard error.
Progress bars and messages go to standard error, so standard output stays parseable.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from enum import IntEnum, StrEnum
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.tree import Tree

from llmreg._version import __version__
from llmreg.client import Client, parse_dependency, parse_ref
from llmreg.errors import (
    AlreadyExistsError,
    ChecksumMismatchError,
    ForbiddenError,
    InvalidReferenceError,
    JobTimeoutError,
    LlmregError,
    NotFoundError,
    RegistryError,
    UnauthorizedError,
)
from llmreg.transfer import sha256_file
from llmreg.types import Asset, Graph, Job


class ExitCode(IntEnum):
    """What ``llmreg`` exits with; scripts may rely on these."""

    OK = 0
    ERROR = 1  # the server refused (409, 422, ...), could not be reached, or anything else
    USAGE = 2  # bad command line (unknown option, missing argument, malformed value)
    NOT_FOUND = 3  # no such asset, version, job or key
    AUTH = 4  # not logged in, credentials expired or revoked (401), or not allowed (403)
    REJECTED = 5  # the registration ran to a verdict: rejected (the failing step is printed)
    TIMEOUT = 6  # no verdict within --timeout (the job goes on), or the server did not answer
    CHECKSUM = 7  # pulled bytes did not match their SHA-256; nothing was kept
    INTERRUPTED = 130  # Ctrl-C or SIGTERM; a pull leaves nothing under the final name


EXIT_CODES_HELP = """\
Exit codes: 0 ok; 1 error (server refused, unreachable); 2 usage; 3 not found;
4 not logged in or not allowed; 5 asset rejected; 6 timed out; 7 checksum mismatch on pull;
130 interrupted.
"""

HELP = f"""Push, pull and inspect models, pipelines, datasets and policies in an LLM Registry.

Start with `llmreg login --url http://localhost:8080 -u admin`. The URL and credentials are kept
in $LLMREG_CONFIG_DIR/config.json (default ~/.config/llmreg, mode 0600); LLMREG_URL,
LLMREG_API_KEY and LLMREG_TOKEN override them.

{EXIT_CODES_HELP}"""


class Output(StrEnum):
    table = "table"
    json = "json"


class PushType(StrEnum):
    # policy and test_suite assets are a spec, not a file: see `llmreg policy apply`.
    model = "model"
    pipeline = "pipeline"
    dataset = "dataset"


app = typer.Typer(
    name="llmreg",
    help=HELP,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
policy_app = typer.Typer(help="Policies: CEL rules every registration is checked against.")
events_app = typer.Typer(help="The registry's event feed.")
keys_app = typer.Typer(help="API keys (llmr_...) for scripts and CI.")
app.add_typer(policy_app, name="policy")
app.add_typer(events_app, name="events")
app.add_typer(keys_app, name="keys")

# Piped, a table keeps its rows whole rather than wrapping at 80 columns.
out = Console(width=None if sys.stdout.isatty() else max(int(os.environ.get("COLUMNS", 0)), 200))
err = Console(stderr=True, soft_wrap=True)


class _State:
    url: str | None = None
    output: Output = Output.table


STATE = _State()


def _set_output(value: Output | None) -> Output:
    STATE.output = value or Output(os.environ.get("LLMREG_OUTPUT", "table"))
    return STATE.output


OutputOption = Annotated[
    Output | None,
    typer.Option(
        "--output",
        "-o",
        help="table (for people) or json (for scripts). [env: LLMREG_OUTPUT]",
        callback=_set_output,
        is_eager=True,
        show_default=False,
    ),
]
TimeoutOption = Annotated[
    float, typer.Option(help="Seconds to wait for the verdict before exiting with 6.", min=0)
]
WaitOption = Annotated[bool, typer.Option("--wait/--no-wait", help="Wait for the verdict.")]


def _print_version(value: bool) -> None:
    if value:
        out.print(f"llmreg {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    url: Annotated[
        str | None,
        typer.Option(help="Registry URL (default: the one you logged in to).", envvar="LLMREG_URL"),
    ] = None,
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Print the client's version and exit.",
            callback=_print_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    STATE.url = url


F = TypeVar("F", bound=Callable[..., Any])


def _command(group: typer.Typer, name: str | None = None) -> Callable[[F], F]:
    """``group.command``, with the client's errors turned into messages and exit codes, and
    Ctrl-C (or SIGTERM) into 130 after the command's own clean-up ran."""

    def register(function: F) -> F:
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> Any:
            try:
                return function(*args, **kwargs)
            except KeyboardInterrupt:
                err.print("[yellow]interrupted[/]")
                raise typer.Exit(ExitCode.INTERRUPTED) from None
            except LlmregError as exc:
                _report_error(exc)
                raise typer.Exit(_exit_code(exc)) from None

        group.command(name)(run)
        return function

    return register


def _client() -> Client:
    return Client(STATE.url)


def _json(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, indent=2, sort_keys=False) + "\n")


def _json_line(doc: Any) -> None:
    sys.stdout.write(json.dumps(doc, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _human(size: int | None) -> str:
    if size is None:
        return "-"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def parse_rate(text: str | None) -> float | None:
    """``500K``, ``2M``, ``1.5MB``, ``1048576`` -> bytes per second (powers of 1024, as curl)."""
    if not text:
        return None
    value = text.strip().upper().removesuffix("B").removesuffix("/S")
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(value[-1:], 1)
    number = value[:-1] if factor != 1 else value
    try:
        rate = float(number) * factor
    except ValueError:
        raise typer.BadParameter(f"{text!r} is not a rate such as 500K or 2M") from None
    if rate <= 0:
        raise typer.BadParameter("the rate must be positive")
    return rate


def _status_style(status: str) -> str:
    return {
        "active": "green",
        "rejected": "red",
        "failed": "red",
        "passed": "green",
        "succeeded": "green",
        "deprecated": "yellow",
        "archived": "dim",
        "skipped": "dim",
    }.get(status, "cyan")


def _styled(status: str) -> str:
    return f"[{_status_style(status)}]{escape(status)}[/]"


@contextmanager
def _progress(description: str, total: int | None) -> Iterator[Callable[[int, int | None], None]]:
    """A transfer bar on standard error (only on a terminal, never with --output json)."""
    enabled = err.is_terminal and STATE.output is Output.table
    progress = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        disable=not enabled,
        transient=False,
    )
    task: TaskID = progress.add_task(description, total=total)

    def update(done: int, size: int | None) -> None:
        progress.update(task, completed=done, total=size)

    with progress:
        yield update


def _ref_label(doc: Mapping[str, Any]) -> str:
    return f"{doc['name']}@{doc['version']}"


# ---- auth ----------------------------------------------------------------------------------------


@_command(app)
def login(
    url: Annotated[
        str | None, typer.Option(help="Registry URL; becomes the default for later commands.")
    ] = None,
    username: Annotated[str | None, typer.Option("--username", "-u")] = None,
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="Read the password from standard input.")
    ] = False,
    api_key: Annotated[
        str | None,
        typer.Option("--api-key", help="Store an API key (llmr_...) instead of logging in."),
    ] = None,
    signing_secret: Annotated[
        str | None, typer.Option(help="The API key's signing secret, if it has one.")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Log in (username and password, or an API key) and store the credentials."""
    client = Client(url or STATE.url)
    if api_key:
        client.use_api_key(api_key.strip(), signing_secret)
        me = client.me()
        client.save_credentials()
        how = f"API key {api_key[:12]}..."
    else:
        if not username:
            username = typer.prompt("Username")
        if password_stdin:
            password = sys.stdin.readline().rstrip("\r\n")
        else:
            password = os.environ.get("LLMREG_PASSWORD") or typer.prompt(
                "Password", hide_input=True
            )
        result = client.login(username, password)
        me = {**result["user"], "permissions": []}
        how = "password"
    if STATE.output is Output.json:
        _json({"url": client.url, "username": me["username"], "roles": me["roles"]})
    else:
        err.print(
            f"Logged in to {client.url} as [bold]{escape(me['username'])}[/] "
            f"({', '.join(me['roles'])}; {how}). Credentials in {client.config.path}"
        )


@_command(app)
def logout() -> None:
    """End this login on the server and forget the stored credentials."""
    client = _client()
    client.logout()
    err.print(f"Logged out of {client.url}.")


@_command(app)
def whoami(output: OutputOption = None) -> None:
    """Who the stored credentials act as, with roles and permissions."""
    client = _client()
    me = client.me()
    if STATE.output is Output.json:
        _json({**me, "url": client.url})
        return
    out.print(f"{escape(me['username'])} on {client.url}")
    out.print(f"roles: {', '.join(me['roles'])}")
    out.print(f"permissions: {', '.join(me['permissions'])}")


# ---- push and pull -------------------------------------------------------------------------------


def _annotations(pairs: Sequence[str]) -> dict[str, str]:
    result = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint="--annotation")
        result[key] = value
    return result


def _dependencies(specs: Sequence[str]) -> list[dict[str, str]]:
    try:
        return [parse_dependency(spec) for spec in specs]
    except InvalidReferenceError as exc:
        raise typer.BadParameter(str(exc), param_hint="--dep") from None


def _wait_verdict(client: Client, job_id: str, timeout: float) -> Job:
    """Wait for a job with a spinner naming the step that runs."""
    enabled = err.is_terminal and STATE.output is Output.table
    with Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        console=err,
        disable=not enabled,
        transient=True,
    ) as progress:
        task = progress.add_task("validating", total=None)

        def update(job: Job) -> None:
            running = next((s["name"] for s in job["steps"] if s["status"] == "running"), None)
            progress.update(task, description=f"validating: {running or job['status']}")

        return client.wait_for_job(job_id, timeout=timeout, on_update=update)


def _report_verdict(asset: Asset, job: Job | None) -> ExitCode:
    """Print the verdict (the failing step and why, for a rejection); the exit code it means."""
    if job is not None and job["status"] == "failed":
        error = job.get("error") or {"code": "?", "message": "?"}
        err.print(
            f"[red]✗[/] the job {job['id']} could not run: {error['code']}: "
            f"{escape(error['message'])}"
        )
        return ExitCode.ERROR
    label = escape(_ref_label(asset))
    if asset["status"] == "rejected":
        rejection = asset.get("rejection") or {"code": "?", "message": "", "step": "?"}
        err.print(f"[red]✗ {label} was rejected[/] ({rejection['code']})")
        failed = [s for s in (job or {"steps": []})["steps"] if s["status"] == "failed"]
        for step in failed or []:
            err.print(
                f"  step [bold]{escape(step['name'])}[/] failed: {escape(step['detail'] or '')}"
            )
        if not failed:
            err.print(f"  step [bold]{rejection['step']}[/]: {escape(rejection['message'])}")
        return ExitCode.REJECTED
    if asset["status"] in ("active", "deprecated"):
        compliance = asset["compliance"]["status"]
        note = f", compliance: {compliance}" if compliance not in ("compliant", "unknown") else ""
        err.print(f"[green]✓[/] {label} is {asset['status']}{note} (id {asset['id']})")
        artifact = asset.get("artifact")
        for finding in artifact["findings"] if artifact else []:
            if finding["severity"] == "info":
                continue
            err.print(f"  {finding['severity']}: {escape(finding['message'])}")
        return ExitCode.OK
    err.print(f"{label} is {asset['status']} (id {asset['id']})")
    return ExitCode.OK


@_command(app)
def push(
    file: Annotated[
        Path, typer.Argument(exists=True, dir_okay=False, readable=True, help="The file to push.")
    ],
    name: Annotated[str, typer.Option("--name", "-n", help="Asset name, e.g. acme/llama.")],
    version: Annotated[str, typer.Option("--version", help="SemVer version, e.g. 1.0.0.")],
    asset_type: Annotated[PushType, typer.Option("--type", "-t")] = PushType.model,
    dep: Annotated[
        list[str] | None,
        typer.Option(
            "--dep", help="A dependency: NAME@RANGE (npm style, e.g. acme/base@^1.0) or an id."
        ),
    ] = None,
    license: Annotated[str | None, typer.Option(help="SPDX license id, e.g. MIT.")] = None,
    description: Annotated[str | None, typer.Option()] = None,
    tag: Annotated[list[str] | None, typer.Option("--tag", help="A tag (repeatable).")] = None,
    annotation: Annotated[
        list[str] | None, typer.Option("--annotation", "-a", help="KEY=VALUE (repeatable).")
    ] = None,
    content_type: Annotated[str | None, typer.Option(help="MIME type of the file.")] = None,
    wait: WaitOption = True,
    timeout: TimeoutOption = 600.0,
    limit_rate: Annotated[
        str | None, typer.Option(help="Cap the upload speed, e.g. 500K or 2M (bytes/s).")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Hash FILE, upload it (streamed), register NAME@VERSION and wait for the verdict.

    Prints the verdict; a rejection names the failing step and why, and exits with 5.
    """
    annotations = _annotations(annotation or [])
    annotations.setdefault("llmreg.filename", file.name)
    dependencies = _dependencies(dep or [])
    rate = parse_rate(limit_rate)
    client = _client()
    size = file.stat().st_size
    with _progress("hashing", size) as update:
        digest = sha256_file(file, update)
    storage = None
    uploaded = client.blob_exists(digest) is None
    if uploaded:
        with _progress("uploading", size) as update:
            blob = client.upload_blob(file, sha256=digest, progress=update, rate=rate)
        storage = {"uri": blob["uri"]}
    elif STATE.output is Output.table:
        err.print("The registry has these bytes already: nothing to upload.")
    try:
        registered = client.register_asset(
            asset_type.value,
            name,
            version,
            description=description,
            license=license,
            tags=tag or None,
            annotations=annotations,
            content_type=content_type,
            size_bytes=size,
            checksum={"algorithm": "SHA256", "value": digest},
            storage=storage,
            dependencies=dependencies or None,
        )
    except AlreadyExistsError as exc:
        existing = f" (asset {exc.asset_id})" if exc.asset_id else ""
        raise AlreadyExistsError(
            exc.status,
            exc.code,
            exc.title,
            f"{name}@{version} is already registered{existing}: versions are immutable, "
            "push a new version",
            exc.problem,
            headers=exc.headers,
        ) from None
    job_id = registered["job"]["id"]
    if not wait:
        if STATE.output is Output.json:
            _json({"asset": registered, "job": registered["job"], "uploaded": uploaded})
        else:
            err.print(
                f"Registered {escape(_ref_label(registered))} (id {registered['id']}); "
                f"job {job_id} is validating it: llmreg jobs {job_id} --wait"
            )
        return
    job = _wait_verdict(client, job_id, timeout)
    asset = client.get_asset(registered["id"])
    code = (
        _report_verdict(asset, job) if STATE.output is Output.table else _verdict_code(asset, job)
    )
    if STATE.output is Output.json:
        _json({"asset": asset, "job": job, "uploaded": uploaded})
    raise typer.Exit(int(code))


def _verdict_code(asset: Asset, job: Job | None) -> ExitCode:
    if job is not None and job["status"] == "failed":
        return ExitCode.ERROR
    return ExitCode.REJECTED if asset["status"] == "rejected" else ExitCode.OK


def _default_filename(asset: Asset) -> str:
    stored = os.path.basename(asset["annotations"].get("llmreg.filename", ""))
    if stored and stored not in (".", ".."):
        return stored
    return f"{asset['name'].rsplit('/', 1)[-1]}-{asset['version']}"


@_command(app)
def pull(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION, NAME (latest active) or an asset id.")],
    dest: Annotated[
        str | None,
        typer.Option(
            "--dest",
            "-d",
            help="File, or folder (existing, or ending in /) to write to; missing folders are "
            "created. Default: the pushed file's name, here.",
        ),
    ] = None,
    limit_rate: Annotated[
        str | None, typer.Option(help="Cap the download speed, e.g. 500K or 2M (bytes/s).")
    ] = None,
    output: OutputOption = None,
) -> None:
    """Download an asset's content, verifying its SHA-256 while writing.

    The bytes go to DEST.part and become DEST only once verified: a mismatch (exit 7), a broken
    connection or Ctrl-C leaves no file under the final name.
    """
    rate = parse_rate(limit_rate)
    client = _client()
    asset = client.resolve(ref)
    if not asset.get("checksum"):
        raise NotFoundError(
            404, "NOT_FOUND", "Not Found", f"{_ref_label(asset)} is metadata only: no content"
        )
    target = Path(dest or _default_filename(asset))
    if dest and (dest.endswith(("/", os.sep)) or target.is_dir()):
        target = target / _default_filename(asset)
    target.parent.mkdir(parents=True, exist_ok=True)
    checksum = asset["checksum"]
    assert checksum is not None
    fresh = True
    if (
        target.is_file()
        and checksum["algorithm"] == "SHA256"
        and target.stat().st_size == asset.get("size_bytes")
        and sha256_file(target) == checksum["value"]
    ):
        fresh = False  # already there and verified: nothing to move
    else:
        with _progress(f"pulling {_ref_label(asset)}", asset.get("size_bytes")) as update:
            client.download_asset(asset, target, progress=update, rate=rate)
    size = target.stat().st_size
    result = {
        "id": asset["id"],
        "name": asset["name"],
        "version": asset["version"],
        "path": str(target),
        "size_bytes": size,
        "checksum": checksum,
        "downloaded": fresh,
    }
    if STATE.output is Output.json:
        _json(result)
    else:
        how = "SHA-256 verified" if fresh else "already there, SHA-256 verified"
        err.print(
            f"[green]✓[/] {escape(_ref_label(asset))} -> {escape(str(target))} "
            f"({_human(size)}, {how})"
        )


# ---- reading -------------------------------------------------------------------------------------


def _assets_table(assets: Sequence[Asset]) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("NAME", "VERSION", "TYPE", "STATUS", "SIZE", "CREATED", "ID"):
        table.add_column(column, no_wrap=column in ("ID", "VERSION", "NAME"))
    for a in assets:
        table.add_row(
            escape(a["name"]),
            escape(a["version"]),
            a["asset_type"],
            _styled(a["status"]),
            _human(a.get("size_bytes")),
            a["created_at"][:19].replace("T", " "),
            a["id"],
        )
    return table


@_command(app, "ls")
def list_assets(
    asset_type: Annotated[str | None, typer.Option("--type", "-t")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n")] = None,
    tag: Annotated[
        list[str] | None, typer.Option("--tag", help="Repeatable; all must match.")
    ] = None,
    status: Annotated[str | None, typer.Option()] = None,
    compliance: Annotated[str | None, typer.Option()] = None,
    author: Annotated[str | None, typer.Option()] = None,
    query: Annotated[
        str | None, typer.Option("--query", "-q", help="Text in name or description.")
    ] = None,
    sort: Annotated[
        str | None, typer.Option(help="created_at, updated_at, name, version, size_bytes.")
    ] = None,
    order: Annotated[str | None, typer.Option(help="asc or desc.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (pages are followed).", min=1)] = 50,
    output: OutputOption = None,
) -> None:
    """List assets, newest first (filters as the API's)."""
    assets = list(
        _client().list_assets(
            asset_type=asset_type,
            name=name,
            tags=tag,
            status=status,
            compliance=compliance,
            author=author,
            q=query,
            sort=sort,
            order=order,
            page_size=min(limit, 500),
            limit=limit,
        )
    )
    if STATE.output is Output.json:
        _json(assets)
    elif assets:
        out.print(_assets_table(assets))
    else:
        err.print("No assets.")


@_command(app)
def show(
    ref: Annotated[str, typer.Argument(help="NAME@VERSION, NAME (latest active) or an asset id.")],
    output: OutputOption = None,
) -> None:
    """One asset in full: status, checksum, dependencies, compliance, the rejection if any."""
    asset = _client().resolve(ref)
    if STATE.output is Output.json:
        _json(asset)
        return
    table = Table(box=None, show_header=False)
    table.add_column(style="bold")
    table.add_column()
    checksum = asset.get("checksum")
    rows: list[tuple[str, str]] = [
        ("name", escape(asset["name"])),
        ("version", escape(asset["version"])),
        ("id", asset["id"]),
        ("type", asset["asset_type"]),
        ("status", _styled(asset["status"])),
        ("description", escape(asset.get("description") or "")),
        ("license", escape(asset.get("license") or "")),
        ("tags", escape(", ".join(asset["tags"]))),
        ("size", _human(asset.get("size_bytes"))),
        ("checksum", f"{checksum['algorithm']}:{checksum['value']}" if checksum else "none"),
        ("compliance", asset["compliance"]["status"]),
        ("created", f"{asset['created_at']} by {asset.get('created_by') or '?'}"),
    ]
    for key, value in sorted(asset["annotations"].items()):
        rows.append((f"annotation {escape(key)}", escape(value)))
    for d in asset["dependencies"]:
        locked = f"{d['name']}@{d['resolved_version']}" if d.get("resolved_version") else "?"
        rows.append(("dependency", escape(f"{d['name']} {d.get('version') or ''} -> {locked}")))
    rejection = asset.get("rejection")
    if rejection:
        rows.append(
            (
                "rejected",
                escape(f"{rejection['code']} at {rejection['step']}: {rejection['message']}"),
            )
        )
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


@_command(app)
def versions(
    name: Annotated[str, typer.Argument(help="Asset name, e.g. acme/llama.")],
    limit: Annotated[int, typer.Option(min=1)] = 100,
    output: OutputOption = None,
) -> None:
    """The versions of a name, highest SemVer first."""
    items = list(_client().list_versions(name, page_size=min(limit, 500), limit=limit))
    if STATE.output is Output.json:
        _json(items)
        return
    out.print(_assets_table(items))


def _tree(graph: Graph, reverse: bool) -> Tree:
    nodes = {n["id"]: n for n in graph["nodes"]}
    children: dict[str, list[tuple[str, str | None]]] = {}
    for edge in graph["edges"]:
        parent, child = (edge["to"], edge["from"]) if reverse else (edge["from"], edge["to"])
        children.setdefault(parent, []).append((child, edge["constraint"]))

    def label(node_id: str, constraint: str | None) -> str:
        node = nodes.get(node_id)
        if node is None:
            return node_id
        via = f" [dim]({escape(constraint)})[/]" if constraint else ""
        return (
            f"[bold]{escape(node['name'])}[/]@{escape(node['version'])}{via} "
            f"{node['asset_type']} {_styled(node['status'])}"
        )

    root = Tree(label(graph["root"], None))
    expanded: set[str] = set()

    def grow(branch: Tree, node_id: str, path: tuple[str, ...]) -> None:
        ordered = sorted(
            children.get(node_id, []),
            key=lambda c: (
                (nodes[c[0]]["name"], nodes[c[0]]["version"]) if c[0] in nodes else ("", "")
            ),
        )
        for child, constraint in ordered:
            sub = branch.add(label(child, constraint))
            if child in path:
                sub.add("[red](cycle)[/]")
            elif child in expanded and children.get(child):
                sub.add("[dim](shown above)[/]")
            else:
                expanded.add(child)
                grow(sub, child, (*path, child))

    grow(root, graph["root"], (graph["root"],))
    if graph["truncated"]:
        root.add("[dim]... deeper levels left out (--max-depth)[/]")
    return root


def _graph_command(ref: str, max_depth: int | None, reverse: bool) -> None:
    client = _client()
    asset = client.resolve(ref)
    fetch = client.dependents if reverse else client.dependencies
    graph = fetch(asset["id"], max_depth=max_depth)
    if STATE.output is Output.json:
        _json(graph)
        return
    out.print(_tree(graph, reverse))
    if len(graph["nodes"]) == 1:
        err.print("No dependents." if reverse else "No dependencies.")


MaxDepthOption = Annotated[
    int | None, typer.Option(help="Stop this many levels down (default: all).", min=0)
]
RefArgument = Annotated[str, typer.Argument(help="NAME@VERSION, NAME or an asset id.")]


@_command(app)
def deps(ref: RefArgument, max_depth: MaxDepthOption = None, output: OutputOption = None) -> None:
    """What an asset depends on, transitively, as locked at registration (a tree)."""
    _graph_command(ref, max_depth, reverse=False)


@_command(app)
def dependents(
    ref: RefArgument, max_depth: MaxDepthOption = None, output: OutputOption = None
) -> None:
    """What depends on an asset, transitively (a tree)."""
    _graph_command(ref, max_depth, reverse=True)


# ---- jobs ----------------------------------------------------------------------------------------


def _job_table(job: Job) -> Table:
    table = Table(box=None, header_style="bold")
    for column in ("STEP", "STATUS", "DETAIL"):
        table.add_column(column)
    for step in job["steps"]:
        table.add_row(step["name"], _styled(step["status"]), escape(step.get("detail") or ""))
    return table


def _asset_id(client: Client, ref: str | None) -> str | None:
    if ref is None:
        return None
    asset_id, _, _ = parse_ref(ref)
    return asset_id or client.resolve(ref)["id"]


@_command(app, "jobs")
def jobs(
    job_id: Annotated[str | None, typer.Argument(help="Show this job (else list jobs).")] = None,
    asset: Annotated[
        str | None, typer.Option("--asset", help="Only this asset's jobs (NAME@VERSION or id).")
    ] = None,
    status: Annotated[str | None, typer.Option(help="queued, running, succeeded, failed.")] = None,
    kind: Annotated[str | None, typer.Option(help="registration or compliance_scan.")] = None,
    limit: Annotated[int, typer.Option(min=1)] = 50,
    wait: Annotated[
        bool, typer.Option("--wait", help="With JOB_ID: wait until it finishes.")
    ] = False,
    timeout: TimeoutOption = 600.0,
    output: OutputOption = None,
) -> None:
    """List jobs, or show one with its steps (--wait: until its verdict; exit 5 if the asset
    was rejected, 6 on timeout)."""
    client = _client()
    if job_id:
        job = _wait_verdict(client, job_id, timeout) if wait else client.get_job(job_id)
        asset_doc = client.get_asset(job["asset_id"]) if job["asset_id"] else None
        code = ExitCode.OK
        if wait and asset_doc is not None:
            code = _verdict_code(asset_doc, job)
        if STATE.output is Output.json:
            _json(job)
        else:
            what = f" for {escape(_ref_label(asset_doc))}" if asset_doc else ""
            out.print(f"job {job['id']} ({job['kind']}{what}): {_styled(job['status'])}")
            out.print(_job_table(job))
            error = job.get("error")
            if error:
                out.print(f"[red]error[/] {error['code']}: {escape(error['message'])}")
            if (
                asset_doc is not None
                and asset_doc["status"] == "rejected"
                and asset_doc["rejection"]
            ):
                r = asset_doc["rejection"]
                out.print(f"[red]rejected[/] {r['code']} at {r['step']}: {escape(r['message'])}")
        raise typer.Exit(int(code))
    items = list(
        client.list_jobs(
            asset_id=_asset_id(client, asset),
            status=status,
            kind=kind,
            page_size=min(limit, 500),
            limit=limit,
        )
    )
    if STATE.output is Output.json:
        _json(items)
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "KIND", "STATUS", "ASSET", "CREATED", "FAILED STEP"):
        table.add_column(column, no_wrap=column in ("ID", "ASSET"))
    for job in items:
        failed = next((s["name"] for s in job["steps"] if s["status"] == "failed"), "")
        table.add_row(
            job["id"],
            job["kind"],
            _styled(job["status"]),
            job["asset_id"] or "-",
            job["created_at"][:19].replace("T", " "),
            failed,
        )
    out.print(table)


# ---- policies ------------------------------------------------------------------------------------

_POLICY_KEYS = {"name", "version", "description", "license", "tags", "annotations", "spec"}
_SPEC_KEYS = {"applies_to", "rules"}


def _load_policy(path: Path) -> dict[str, Any]:
    """A policy file: ``name``, ``version``, optional ``description``/``tags``/``annotations``,
    and the spec either under ``spec:`` or inline (``applies_to``, ``rules``)."""
    import yaml

    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise typer.BadParameter(f"{path} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict):
        raise typer.BadParameter(f"{path} must hold a mapping (name, version, rules, ...)")
    unknown = set(doc) - _POLICY_KEYS - _SPEC_KEYS - {"asset_type"}
    if unknown:
        raise typer.BadParameter(f"{path}: unknown keys {', '.join(sorted(unknown))}")
    if doc.get("asset_type", "policy") != "policy":
        raise typer.BadParameter(f"{path}: asset_type must be policy")
    missing = [k for k in ("name", "version") if not doc.get(k)]
    if missing:
        raise typer.BadParameter(f"{path}: {' and '.join(missing)} required")
    spec = doc.get("spec")
    inline = {k: doc[k] for k in _SPEC_KEYS if k in doc}
    if spec is not None and inline:
        raise typer.BadParameter(f"{path}: give the rules under spec: or inline, not both")
    body = {k: doc[k] for k in _POLICY_KEYS - {"spec"} if k in doc}
    body["version"] = str(body["version"])
    body["spec"] = spec if spec is not None else inline
    return body


@_command(policy_app, "apply")
def policy_apply(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="Policy YAML.")],
    wait: WaitOption = True,
    timeout: TimeoutOption = 600.0,
    output: OutputOption = None,
) -> None:
    """Register the policy in FILE.yaml (needs the developer role) and wait for its verdict.

    \b
    name: acme/license-allowlist
    version: 1.0.0
    applies_to: {asset_types: [model], tags: [prod]}
    rules:
      - name: allowed-license
        severity: deny            # or warn
        expression: asset.license in ["MIT", "Apache-2.0"]
        message: license must be MIT or Apache-2.0

    Versions are immutable: applying a file whose name@version exists with the same spec
    changes nothing (exit 0); with another spec it fails: bump the version.
    """
    body = _load_policy(file)
    client = _client()
    try:
        registered = client.register_asset("policy", **body)
    except AlreadyExistsError:
        existing = client.get_version(body["name"], body["version"])
        # The server stores specs with their defaults filled in: compare what both say.
        if _normalise(existing.get("spec")) != _normalise(body["spec"]):
            raise
        if STATE.output is Output.json:
            _json({"asset": existing, "job": None, "unchanged": True})
        else:
            err.print(
                f"{escape(_ref_label(existing))} is already registered with this spec "
                f"({_styled(existing['status'])}): unchanged."
            )
        raise typer.Exit(int(_verdict_code(existing, None))) from None
    if not wait:
        if STATE.output is Output.json:
            _json({"asset": registered, "job": registered["job"], "unchanged": False})
        else:
            err.print(f"Registered {escape(_ref_label(registered))}; job {registered['job']['id']}")
        return
    job = _wait_verdict(client, registered["job"]["id"], timeout)
    asset = client.get_asset(registered["id"])
    if STATE.output is Output.json:
        _json({"asset": asset, "job": job, "unchanged": False})
        raise typer.Exit(int(_verdict_code(asset, job)))
    raise typer.Exit(int(_report_verdict(asset, job)))


def _normalise(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _normalise(v) for k, v in value.items() if v not in (None, [], {})}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


@_command(policy_app, "ls")
def policy_ls(output: OutputOption = None) -> None:
    """The registered policies (every version)."""
    items = list(_client().list_assets(asset_type="policy", limit=500))
    if STATE.output is Output.json:
        _json(items)
    else:
        out.print(_assets_table(items))


# ---- events --------------------------------------------------------------------------------------


def _event_summary(data: Mapping[str, Any]) -> str:
    if "name" in data and "version" in data:
        head = f"{data['name']}@{data['version']}"
        rest = {k: v for k, v in data.items() if k not in ("name", "version", "job_id")}
    else:
        head, rest = "", dict(data)
    parts = [head] if head else []
    parts += [f"{k}={json.dumps(v) if not isinstance(v, str) else v}" for k, v in rest.items()]
    text = " ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


@_command(events_app, "tail")
def events_tail(
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep polling for new events (Ctrl-C stops).")
    ] = False,
    event_type: Annotated[
        str | None, typer.Option("--type", help="Only this event type, e.g. asset_rejected.")
    ] = None,
    asset: Annotated[
        str | None, typer.Option("--asset", help="Only this asset's (NAME@VERSION or id).")
    ] = None,
    after: Annotated[str | None, typer.Option(help="Start after this event id.")] = None,
    interval: Annotated[float, typer.Option(help="Seconds between polls.", min=0.1)] = 1.0,
    output: OutputOption = None,
) -> None:
    """Print events oldest first (JSON lines with --output json); --follow for new ones."""
    client = _client()
    asset_id = _asset_id(client, asset)
    stream = client.tail_events(
        after=after, type=event_type, asset_id=asset_id, poll_interval=interval, follow=follow
    )
    try:
        for event in stream:
            if STATE.output is Output.json:
                _json_line(event)
            else:
                out.print(
                    f"{event['time'][:23]} {event['type']:<28} {event.get('subject') or '-':<26} "
                    f"{escape(event.get('actor') or '-')} {escape(_event_summary(event['data']))}",
                    highlight=False,
                    soft_wrap=True,
                )
    except KeyboardInterrupt:
        if not follow:
            raise
        # Ctrl-C is how a follow ends: not an error.


# ---- API keys ------------------------------------------------------------------------------------


@_command(keys_app, "create")
def keys_create(
    name: Annotated[str, typer.Argument(help="What the key is for, e.g. ci.")],
    role: Annotated[str | None, typer.Option(help="viewer, user, developer or admin.")] = None,
    expires_in_days: Annotated[int | None, typer.Option(min=1)] = None,
    signing: Annotated[
        bool, typer.Option(help="Also issue a signing secret; requests must then be signed.")
    ] = False,
    output: OutputOption = None,
) -> None:
    """Create an API key; the key (and signing secret) are shown only now."""
    created = _client().create_api_key(
        name, role=role, expires_in_days=expires_in_days, signing=signing
    )
    if STATE.output is Output.json:
        _json(created)
        return
    out.print(created["key"])
    if created.get("signing_secret"):
        out.print(f"signing secret: {created['signing_secret']}")
    err.print(
        f"API key {created['prefix']}... ({created['role']}): store it now, it is not shown "
        "again. Use it with `llmreg login --api-key` or LLMREG_API_KEY."
    )


@_command(keys_app, "ls")
def keys_ls(output: OutputOption = None) -> None:
    """Your API keys (never their secrets)."""
    items = list(_client().list_api_keys())
    if STATE.output is Output.json:
        _json(items)
        return
    table = Table(box=None, header_style="bold")
    for column in ("ID", "NAME", "PREFIX", "ROLE", "CREATED", "EXPIRES", "LAST USED"):
        table.add_column(column)
    for key in items:
        table.add_row(
            key["id"],
            escape(key["name"]),
            key["prefix"],
            key["role"],
            key["created_at"][:19],
            (key.get("expires_at") or "-")[:19],
            (key.get("last_used_at") or "-")[:19],
        )
    out.print(table)


@_command(keys_app, "revoke")
def keys_revoke(
    key_id: Annotated[str, typer.Argument(help="The key's id (llmreg keys ls).")],
) -> None:
    """Revoke an API key: it stops working at once."""
    _client().delete_api_key(key_id)
    err.print(f"Revoked {key_id}.")


# ---- entry point ---------------------------------------------------------------------------------


def _exit_code(exc: BaseException) -> ExitCode:
    if isinstance(exc, InvalidReferenceError):
        return ExitCode.USAGE
    if isinstance(exc, ChecksumMismatchError):
        return ExitCode.CHECKSUM
    if isinstance(exc, TimeoutError):
        return ExitCode.TIMEOUT
    if isinstance(exc, NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(exc, UnauthorizedError | ForbiddenError):
        return ExitCode.AUTH
    return ExitCode.ERROR


def _report_error(exc: LlmregError) -> None:
    if STATE.output is Output.json:
        if isinstance(exc, RegistryError):
            problem = exc.problem or {"status": exc.status, "code": exc.code, "detail": exc.detail}
        else:
            problem = {"code": exc.code, "detail": str(exc)}
            if isinstance(exc, JobTimeoutError):
                problem["job"] = exc.job
        sys.stderr.write(json.dumps({"error": problem}) + "\n")
        return
    if isinstance(exc, RegistryError):
        err.print(f"[red]error:[/] {escape(exc.code)} ({exc.status}): {escape(exc.detail)}")
        for field, messages in sorted(exc.errors.items()):
            err.print(f"  {escape(field)}: {escape('; '.join(map(str, messages)))}")
        if isinstance(exc, UnauthorizedError):
            err.print("Log in again: llmreg login")
    elif isinstance(exc, JobTimeoutError):
        err.print(
            f"[yellow]timed out:[/] {escape(str(exc))}; it goes on: "
            f"llmreg jobs {exc.job.get('id')} --wait"
        )
    else:
        err.print(f"[red]error:[/] {escape(str(exc))}")


def _raise_interrupt(signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt


def main() -> None:
    """The console script: run the command, exit with an ``ExitCode``."""
    # SIGTERM ends a pull as Ctrl-C does: through its clean-up, never leaving a part file.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    app(prog_name="llmreg")


if __name__ == "__main__":  # pragma: no cover
    main()
