"""The ``jessy`` command: one entry point for the whole pipeline."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a model hub unless the user says so
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import typer  # noqa: E402
import yaml  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from jessy.config import ConfigError, JessyConfig, load_config  # noqa: E402

app = typer.Typer(no_args_is_help=True, add_completion=False, pretty_exceptions_show_locals=False,
                  help="Fine-tune a small Gemma into a warm persona companion, and prove it.")
config_app = typer.Typer(no_args_is_help=True, help="Resolve and inspect pipeline configs.")
persona_app = typer.Typer(no_args_is_help=True, help="Validate and inspect persona specs.")
data_app = typer.Typer(no_args_is_help=True, help="Load, validate and prepare conversation data.")
app.add_typer(config_app, name="config")
app.add_typer(persona_app, name="persona")
app.add_typer(data_app, name="data")

out = Console()
err = Console(stderr=True, soft_wrap=True)

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="pipeline YAML file")]
ProfileOpt = Annotated[str | None, typer.Option("--profile", "-p", help="bundled profile: quick or full")]


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _config(path: Path | None, profile: str | None) -> JessyConfig:
    try:
        return load_config(path, profile)
    except ConfigError as e:
        raise _fail(str(e)) from None


# --------------------------------------------------------------------------- run


@app.command()
def run(config: ConfigOpt = None, profile: ProfileOpt = "quick",
        out_dir: Annotated[Path | None, typer.Option("--out", help="run directory")] = None) -> None:
    """The whole pipeline on the bundled defaults: data -> stages -> eval -> export -> report."""
    cfg = _config(config, profile)
    run_dir = out_dir or Path(cfg.run.output_dir) / time.strftime("run-%Y%m%d-%H%M%S")
    out.print(f"[bold]jessy run[/] profile={profile or '-'} -> {run_dir}")
    stats = _prepare(cfg, run_dir / "data")
    out.print(f"data: {stats['total']} conversations, splits {stats['by_split']}")
    first = cfg.stages[0].name if cfg.stages else "evaluation"
    err.print(f"jessy run: stopped before stage '{first}': {_PENDING['train']} is not built yet. "
              f"The prepared data is in {run_dir / 'data'}.")
    raise typer.Exit(2)


# --------------------------------------------------------------------------- config


@config_app.command("show")
def config_show(file: Annotated[Path | None, typer.Argument(help="pipeline YAML")] = None,
                profile: ProfileOpt = None) -> None:
    """Print the resolved config: schema defaults <- profile <- FILE."""
    cfg = _config(file, profile)
    out.print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True), end="",
              highlight=False, markup=False)


# --------------------------------------------------------------------------- persona


def _persona(ref: str):  # -> Persona
    from jessy.persona import load_persona

    try:
        return load_persona(ref)
    except ConfigError as e:
        raise _fail(str(e)) from None


@persona_app.command("validate")
def persona_validate(file: Annotated[Path, typer.Argument(help="persona YAML")]) -> None:
    """Check a persona file; errors name the line and field."""
    p = _persona(str(file))
    flags = sum(len(v) for kind in ("meta_commentary", "dependency") for v in getattr(p.red_flags, kind).values())
    out.print(f"[green]ok[/] {file}: {p.name}, {len(p.dimensions)} dimensions, "
              f"{len(p.constitution)} constitutional principles, {flags} red-flag phrases")


@persona_app.command("show")
def persona_show(ref: Annotated[str, typer.Argument(help="bundled name or YAML path")] = "jessy") -> None:
    """Show a persona: dimensions with bands, constitution, red flags, prompts."""
    p = _persona(ref)
    out.print(f"[bold]{p.name}[/] - {p.summary}\n")
    table = Table("dimension", "band", "Hz", "description", "cues", title="Dimensions")
    for d in p.dimensions:
        band = p.bands[d.band]
        table.add_row(d.name, d.band, f"{band.min_hz}-{band.max_hz}", d.description, ", ".join(d.cues[:6]) + " ...")
    out.print(table)
    table = Table("principle", "critique", "revision", title="Constitution")
    for c in p.constitution:
        table.add_row(c.name, c.critique, c.revision)
    out.print(table)
    for kind in ("meta_commentary", "dependency"):
        for lang, phrases in getattr(p.red_flags, kind).items():
            out.print(f"[bold]{kind}[/] ({lang}): {len(phrases)} phrases, e.g. {', '.join(phrases[:4])}")
    out.print(f"\n[bold]system prompt (short)[/]\n{p.system_prompts.short}")


# --------------------------------------------------------------------------- data


@data_app.command("validate")
def data_validate(
    files: Annotated[list[Path], typer.Argument(help="JSONL, JSON or CSV files")],
    fmt: Annotated[str, typer.Option("--format", "-f",
                                     help="auto, messages, sharegpt, alpaca, csv, preference")] = "auto",
    rejects: Annotated[Path | None, typer.Option("--rejects", help="write rejected rows here (JSONL)")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON summary")] = False,
) -> None:
    """Read files, keep every good row, report each bad one with its line and reason."""
    from jessy.data.formats import UnreadableFile, read_file

    results, failed, bad_rows = [], [], []
    for f in files:
        try:
            res = read_file(f, fmt)
        except UnreadableFile as e:
            failed.append(str(e))
            continue
        results.append(res)
        bad_rows += res.rejects
    if rejects is not None:
        rejects.parent.mkdir(parents=True, exist_ok=True)
        tmp = rejects.with_name(rejects.name + ".tmp")
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in bad_rows), encoding="utf-8")
        os.replace(tmp, rejects)
    summary = {"files": [r.summary() for r in results], "kept": sum(len(r.rows) for r in results),
               "rejected": len(bad_rows)}
    if failed:
        summary["unreadable"] = failed
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        table = Table("file", "format", "kept", "rejected")
        for r in results:
            table.add_row(r.file, r.format, str(len(r.rows)), str(len(r.rejects)))
        out.print(table)
        for r in bad_rows[:20]:
            out.print(f"  {r['file']}:{r['line']}: {r['reason']}", highlight=False, markup=False)
        if len(bad_rows) > 20:
            out.print(f"  ... and {len(bad_rows) - 20} more" + (f" (all in {rejects})" if rejects else ""))
    for message in failed:
        err.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    if failed:
        raise typer.Exit(1)


def _prepare(cfg: JessyConfig, out_dir: Path) -> dict:
    from jessy.data.formats import UnreadableFile
    from jessy.data.prepare import prepare
    from jessy.model.resolve import ModelNotFound, load_tokenizer

    persona = _persona(cfg.persona.path)
    try:
        tok = load_tokenizer(cfg.model.base, persona.special_tokens if cfg.persona.special_tokens else ())
        return prepare(cfg, out_dir, tok, persona.system_prompt(cfg.persona.training_prompt))
    except (UnreadableFile, ModelNotFound) as e:
        raise _fail(str(e)) from None


@data_app.command("prepare")
def data_prepare(config: ConfigOpt = None, profile: ProfileOpt = None,
                 out_dir: Annotated[Path, typer.Option("--out", help="output directory")] = Path("out/data")) -> None:
    """Template, truncate and split the data (the bundled seeds by default); write stats.json."""
    cfg = _config(config, profile)
    stats = _prepare(cfg, out_dir)
    table = Table("split", "rows", title=f"{stats['total']} conversations -> {out_dir}")
    for split, n in stats["by_split"].items():
        table.add_row(split, str(n))
    out.print(table)
    out.print("by category: " + ", ".join(f"{k} {v}" for k, v in stats["by_category"].items()))
    out.print("by language: " + ", ".join(f"{k} {v}" for k, v in stats["by_language"].items()))
    tl = stats["token_length"]
    out.print(f"tokens: p50 {tl['p50']}, p90 {tl['p90']}, max {tl['max']} (max_seq_length {stats['max_seq_length']}); "
              f"truncated {stats['truncated']}, rejected {stats['rejected']}")


# --------------------------------------------------------------------------- not built yet

_PENDING = {
    "train": "staged training (issue #5)",
    "eval": "evaluation (issue #6)",
    "export": "export to merged weights, GGUF and Ollama (issue #7)",
    "chat": "chat (issue #7)",
    "serve": "the OpenAI-compatible server (issue #7)",
    "runs": "the run registry (issue #8)",
}


def _pending(name: str) -> None:
    def command(ctx: typer.Context) -> None:
        err.print(f"jessy {name}: {_PENDING[name]} is not built yet.")
        raise typer.Exit(2)

    command.__doc__ = f"Not built yet: {_PENDING[name]}."
    app.command(name, context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(command)


for _name in _PENDING:
    _pending(_name)


def main() -> None:  # pragma: no cover
    sys.exit(app())


if __name__ == "__main__":  # pragma: no cover
    main()
