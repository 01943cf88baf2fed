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

out = Console(soft_wrap=True)  # messages stay one line when piped (grep-able, test-stable)
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
    _train(cfg, run_dir)
    err.print(f"jessy run: stopped after training: {_PENDING['eval']} is not built yet. The run is in {run_dir}.")
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
            out.print(f"  {r['file']}:{r['line']}: {r['reason']}", highlight=False, markup=False, soft_wrap=True)
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
                 out_dir: Annotated[Path | None, typer.Option("--out", help="default: data.work_dir")] = None) -> None:
    """Dedup, balance, template, truncate and split the data (the bundled seeds by default); write stats.json."""
    cfg = _config(config, profile)
    out_dir = out_dir or Path(cfg.data.work_dir)
    stats = _prepare(cfg, out_dir)
    out.print(f"{stats['total']} conversations -> {out_dir}")
    table = Table("split", "rows")
    for split, n in stats["by_split"].items():
        table.add_row(split, str(n))
    out.print(table)
    out.print("by category: " + ", ".join(f"{k} {v}" for k, v in stats["by_category"].items()))
    out.print("by language: " + ", ".join(f"{k} {v}" for k, v in stats["by_language"].items()))
    tl = stats["token_length"]
    out.print(f"tokens: p50 {tl['p50']}, p90 {tl['p90']}, max {tl['max']} (max_seq_length {stats['max_seq_length']}); "
              f"truncated {stats['truncated']}, rejected {stats['rejected']}")


# --------------------------------------------------------------------------- data engine


def _gold_rows(cfg: JessyConfig) -> list[dict]:
    """The hand-written rows that define the target: bundled seeds and the user's own sources."""
    from jessy.data.prepare import load_rows

    return [r for res in load_rows(cfg) for r in res.rows
            if "messages" in r and r["metadata"].get("source") not in ("general_dialogue", "general_reasoning")]


def _engine(cfg: JessyConfig, need_teacher: bool = True):  # -> (persona, gold, gates, backend)
    from jessy.config import TeacherConfig
    from jessy.data.gates import Gates
    from jessy.data.generate import make_backend

    persona = _persona(cfg.persona.path)
    gold = _gold_rows(cfg)
    work = Path(cfg.data.work_dir)
    judge_cfg = cfg.data.gates.judge
    judge = make_backend(judge_cfg, cfg.model.base, work / "cache.sqlite") if judge_cfg else None
    gates = Gates(persona, cfg.data.gates, gold, judge)
    work.mkdir(parents=True, exist_ok=True)
    (work / "calibration.json").write_text(json.dumps(gates.report.calibration, indent=1))
    backend = make_backend(cfg.data.teacher or TeacherConfig(), cfg.model.base, work / "cache.sqlite") \
        if need_teacher else None
    return persona, gold, gates, backend


def _print_json_or(summary: dict, as_json: bool, lines: list[str]) -> None:
    if as_json:
        print(json.dumps(summary, ensure_ascii=False))
    else:
        for line in lines:
            out.print(line, highlight=False, soft_wrap=True)


JsonOpt = Annotated[bool, typer.Option("--json", help="print the summary as JSON")]


@data_app.command("generate")
def data_generate(config: ConfigOpt = None, profile: ProfileOpt = None,
                  n: Annotated[int | None, typer.Option("--n", help="rows to generate")] = None,
                  category: Annotated[str | None, typer.Option("--category", help="only this category")] = None,
                  fill_gaps: Annotated[bool, typer.Option("--fill-gaps", help="follow the gap plan")] = False,
                  as_json: JsonOpt = False) -> None:
    """Few-shot generation from the seeds through the teacher, gated; rerun to resume."""
    from jessy.config import CATEGORIES
    from jessy.data.gaps import load_plan
    from jessy.data.generate import generate

    cfg = _config(config, profile)
    if category and category not in CATEGORIES:
        raise _fail(f"--category {category!r}: expected one of {', '.join(CATEGORIES)}", 2)
    try:
        plan = load_plan(Path(cfg.data.work_dir)) if fill_gaps else None
    except FileNotFoundError as e:
        raise _fail(str(e)) from None
    count = sum(int(p["n"]) for p in plan) if plan else (n if n is not None else cfg.data.generate.n)
    persona, gold, gates, backend = _engine(cfg)
    summary = generate(cfg, persona, gold, backend, gates, count, category, plan)
    gates_line = ", ".join(f"{g} {v}" for g, v in summary["passed_per_gate"].items())
    _print_json_or(summary, as_json, [
        f"job {summary['job']}: {summary['tasks']} tasks, {summary['parsed']} parsed, {summary['kept']} kept "
        f"({summary['generated_now']} generated now in {summary['seconds']} s)",
        f"passed per gate: {gates_line}",
        f"first failed gate: {summary['first_failed_gate']}",
        f"tokens: {summary['tokens']}; seconds per 100 rows: {summary['seconds_per_100_rows']}"])


@data_app.command("gaps")
def data_gaps(config: ConfigOpt = None, profile: ProfileOpt = None, as_json: JsonOpt = False) -> None:
    """k-means gap analysis of the current pool; writes gaps.json (the plan) and gaps.png."""
    from jessy.data.gaps import analyze, plot, write
    from jessy.data.prepare import engine_rows

    cfg = _config(config, profile)
    persona = _persona(cfg.persona.path)
    rows = _gold_rows(cfg) + engine_rows(cfg)[0]
    result = analyze(rows, persona.dimension_names, cfg.data.composition, cfg.data.clusters, cfg.data.seed)
    work = Path(cfg.data.work_dir)
    write(result, work)
    plot(result, persona.dimension_names, cfg.data.composition, work / "gaps.png")
    summary = {k: result[k] for k in ("rows", "k", "mean_cluster_size")} | {
        "under_represented": len(result["under_represented"]), "missing_pairs": len(result["missing_pairs"]),
        "categories_below_share": result["categories_below_share"], "plan_rows": sum(p["n"] for p in result["plan"])}
    _print_json_or(summary, as_json, [
        f"{result['rows']} rows, k={result['k']}: {summary['under_represented']} under-represented clusters, "
        f"{summary['missing_pairs']} dimension pairs never together",
        f"categories below share: {result['categories_below_share'] or 'none'}",
        f"plan: {summary['plan_rows']} rows -> {work / 'gaps.json'} (plot {work / 'gaps.png'}); "
        "run `jessy data generate --fill-gaps`"])


@data_app.command("augment")
def data_augment(config: ConfigOpt = None, profile: ProfileOpt = None,
                 limit: Annotated[int | None, typer.Option("--limit", help="at most this many operations")] = None,
                 as_json: JsonOpt = False) -> None:
    """Paraphrase, back-translate, synonym-replace, substitute entities, vary dimensions; gated."""
    from jessy.data.augment import augment

    cfg = _config(config, profile)
    persona, gold, gates, backend = _engine(cfg)
    summary = augment(cfg, gold, backend, gates, persona.dimension_names, limit=limit)
    _print_json_or(summary, as_json, [f"{summary['planned']} operations planned, {summary['done_now']} done now, "
                                      f"{summary['kept']} rows kept", f"per operation: {summary['per_op']}"])


@data_app.command("constitution")
def data_constitution(config: ConfigOpt = None, profile: ProfileOpt = None,
                      prompts: Annotated[Path | None, typer.Option("--prompts", help="red-team prompts JSONL")] = None,
                      limit: Annotated[int | None, typer.Option("--limit", help="only the first N prompts")] = None,
                      as_json: JsonOpt = False) -> None:
    """Critique-and-revise red-team replies against the constitution -> SFT and preference rows."""
    from jessy.data.constitution import constitution, load_redteam

    cfg = _config(config, profile)
    persona, _, gates, backend = _engine(cfg)
    items = load_redteam(prompts)[:limit]
    summary = constitution(cfg, persona, backend, gates, items)
    _print_json_or(summary, as_json, [
        f"{summary['prompts']} prompts: {summary['sft_kept']} revisions kept, "
        f"{summary['preference_pairs']} preference pairs; revisions failing: {summary['revision_failed']}"])


@data_app.command("report")
def data_report(config: ConfigOpt = None, profile: ProfileOpt = None,
                data: Annotated[Path | None, typer.Option("--data", help="prepared data (default: work_dir)")] = None,
                out_dir: Annotated[Path | None, typer.Option("--out", help="default: work_dir")] = None) -> None:
    """Write data_report.html and data_report.json."""
    from jessy.data.report import write_report

    cfg = _config(config, profile)
    work = Path(cfg.data.work_dir)
    try:
        write_report(work, data or work, _persona(cfg.persona.path).dimension_names, out_dir or work)
    except FileNotFoundError as e:
        raise _fail(str(e)) from None
    out.print(f"wrote {(out_dir or work) / 'data_report.html'} and data_report.json")


# --------------------------------------------------------------------------- train


def _train(cfg: JessyConfig, run_dir: Path, only_stage: str | None = None) -> dict:
    from jessy.model.resolve import load_tokenizer
    from jessy.train.pipeline import StageFailed, train_run

    persona = _persona(cfg.persona.path)
    tok = load_tokenizer(cfg.model.base, persona.special_tokens if cfg.persona.special_tokens else ())
    try:
        result = train_run(cfg, persona, run_dir, tok, out, only_stage)
    except (StageFailed, FileNotFoundError, ValueError) as e:
        raise _fail(f"{e} (resume with: jessy train --resume {run_dir})") from None
    table = Table("stage", "steps", "loss first->last", "val loss", "time s", "tokens/s", "peak MB", "alarms")
    for s in result["stages"]:
        loss = f"{s['loss_first']:.3f} -> {s['loss_last']:.3f}" if s.get("loss_first") is not None else "-"
        val = f"{s['val_loss']:.3f}" if s.get("val_loss") is not None else "-"
        table.add_row(s["stage"], str(s["steps"]), loss, val, str(s["seconds"]), str(s["tokens_per_s"]),
                      str(s["peak_memory_mb"]), str(len(s["alarms"])))
    out.print(table)
    verdict = result["verdict"]
    colour = "green" if verdict["verdict"] == "GO" else "red"
    out.print(f"[bold {colour}]{verdict['verdict']}[/]")
    for reason in verdict["reasons"]:
        out.print(f"  {reason}", highlight=False, markup=False)
    out.print(f"run: {run_dir}")
    return result


@app.command()
def train(config: ConfigOpt = None, profile: ProfileOpt = None,
          stage: Annotated[str | None, typer.Option("--stage", help="run only this stage")] = None,
          resume: Annotated[Path | None, typer.Option("--resume", help="continue this run directory")] = None,
          out_dir: Annotated[Path | None, typer.Option("--out", help="run directory")] = None) -> None:
    """Train the config's stages (personality -> reasoning -> ethics -> preference -> polish)."""
    if resume is not None:
        if not (resume / "config.yaml").exists():
            raise _fail(f"{resume}: not a run directory (no config.yaml)")
        cfg = _config(resume / "config.yaml", None)
        run_dir = resume
    else:
        cfg = _config(config, profile)
        run_dir = out_dir or Path(cfg.run.output_dir) / time.strftime("run-%Y%m%d-%H%M%S")
        if not (run_dir / "data" / "train.jsonl").exists():
            stats = _prepare(cfg, run_dir / "data")
            out.print(f"data: {stats['total']} conversations, splits {stats['by_split']}")
    _train(cfg, run_dir, stage)


@app.command()
def serve(model: Annotated[str, typer.Argument(help="HF directory, .gguf file or 'gemma3-270m'")],
          host: Annotated[str, typer.Option(help="bind address")] = "127.0.0.1",
          port: Annotated[int, typer.Option(help="port")] = 8000,
          name: Annotated[str, typer.Option(help="model name the API reports")] = "jessy") -> None:
    """An OpenAI-compatible server (/v1/chat/completions, /v1/completions, /v1/models, /health)."""
    import uvicorn

    from jessy.generation.backends import LlamaCppBackend, TransformersBackend
    from jessy.model.resolve import ModelNotFound, resolve_base
    from jessy.serve.server import create_app

    try:
        backend = LlamaCppBackend(model) if model.endswith(".gguf") else TransformersBackend(resolve_base(model))
    except (ModelNotFound, ValueError, OSError) as e:
        raise _fail(str(e)) from None
    out.print(f"serving {model} as '{name}' on http://{host}:{port}/v1")
    uvicorn.run(create_app(backend, name), host=host, port=port, log_level="info")


# --------------------------------------------------------------------------- not built yet

_PENDING = {
    "eval": "evaluation (issue #6)",
    "export": "export to merged weights, GGUF and Ollama (issue #7)",
    "chat": "chat (issue #7)",
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
