import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jessy.cli import app
from jessy.data.formats import UnreadableFile, read_file

runner = CliRunner()
U, A = "user", "assistant"


def jsonl(tmp_path: Path, name: str, rows: list, raw_lines: dict[int, bytes] | None = None) -> Path:
    lines = [json.dumps(r, ensure_ascii=False).encode() for r in rows]
    for at, raw in (raw_lines or {}).items():
        lines.insert(at, raw)
    p = tmp_path / name
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def conv(*turns):
    return {"messages": [{"role": r, "content": c} for r, c in turns]}


def test_messages_format_with_metadata_and_bom(tmp_path):
    p = tmp_path / "m.jsonl"
    row = {**conv((U, "hi"), (A, "hello")), "id": "x1",
           "metadata": {"category": "warmth", "dimensions_active": ["Emotion"], "language": "en"}}
    p.write_bytes(b"\xef\xbb\xbf" + json.dumps(row).encode() + b"\n\n")
    res = read_file(p)
    assert res.format == "messages" and not res.rejects
    assert res.rows == [{"id": "x1", "messages": row["messages"], "metadata": row["metadata"],
                         "origin": {"file": str(p), "line": 1}}]


def test_sharegpt_alpaca_csv_and_preference(tmp_path):
    sg = jsonl(tmp_path, "sg.jsonl", [{"conversations": [
        {"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hey"}, {"from": "gpt", "value": "Hi!"}]}])
    res = read_file(sg)
    assert res.format == "sharegpt"
    assert [m["role"] for m in res.rows[0]["messages"]] == ["system", U, A]

    al = jsonl(tmp_path, "al.jsonl", [{"instruction": "Summarize", "input": "A long day.", "output": "Tiring.",
                                       "category": "reasoning"},
                                      {"instruction": "Say hi", "input": "", "output": "Hi"}])
    res = read_file(al)
    assert res.format == "alpaca" and len(res.rows) == 2
    assert res.rows[0]["messages"][0]["content"] == "Summarize\n\nA long day."
    assert res.rows[0]["metadata"]["category"] == "reasoning"

    csvp = tmp_path / "c.csv"
    csvp.write_text('prompt,response,category,dimensions_active\n"Hi, you",Hello,warmth,Emotion;Social\n'
                    '"multi\nline",ok,,\n', encoding="utf-8")
    res = read_file(csvp)
    assert res.format == "csv" and not res.rejects
    assert res.rows[0]["metadata"] == {"category": "warmth", "dimensions_active": ["Emotion", "Social"]}
    assert res.rows[1]["messages"][0]["content"] == "multi\nline"
    assert res.rows[1]["origin"]["line"] == 3

    pref = jsonl(tmp_path, "p.jsonl", [
        {"prompt": "Help me lie", "chosen": "Let's find another way.", "rejected": "Sure."},
        {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello"}],
         "rejected": [{"role": "assistant", "content": "Go away"}]}])
    res = read_file(pref)
    assert res.format == "preference" and len(res.rows) == 2
    assert res.rows[1]["prompt"] == [{"role": U, "content": "Hi"}] and res.rows[1]["rejected"] == "Go away"


def test_json_array_file(tmp_path):
    p = tmp_path / "a.json"
    p.write_text(json.dumps([{"instruction": "a", "output": "b"}, {"instruction": "c", "output": ""}], indent=1))
    res = read_file(p)
    assert res.format == "alpaca" and len(res.rows) == 1
    assert res.rejects[0]["reason"] == "empty content: output" and res.rejects[0]["line"] > 1


REASONS = [
    (b"\xff\xfe not utf8", "undecodable bytes"),
    (b'{"messages": [', "broken JSON"),
    (b'[1, 2]', "not an object"),
    (json.dumps({"messages": "hi"}).encode(), "wrong type: messages must be a list"),
    (json.dumps(conv((U, "a"), ("tool", "b"))).encode(), "unknown role 'tool'"),
    (json.dumps(conv((U, "  "), (A, "b"))).encode(), "empty content"),
    (json.dumps(conv((U, "only a question"))).encode(), "no assistant turn"),
    (json.dumps(conv((U, "a"), (U, "b"), (A, "c"))).encode(), "roles must alternate"),
    (json.dumps({"messages": [{"role": U, "content": 5}, {"role": A, "content": "x"}]}).encode(), "wrong type"),
    (json.dumps({**conv((U, "a"), (A, "b")), "metadata": {"category": "gossip"}}).encode(), "unknown category"),
    (json.dumps({"text": "no messages"}).encode(), "missing field: messages"),
    (json.dumps(conv((U, "a"), (A, "b"), (U, "c"))).encode(), "ends with a user turn"),
]


def test_every_rejection_reason_keeps_the_rows_after_it(tmp_path):
    good = conv((U, "hello"), (A, "hi there"))
    raw = {2 * i + 1: line for i, (line, _) in enumerate(REASONS)}
    p = jsonl(tmp_path, "broken.jsonl", [good] * (len(REASONS) + 1), raw)
    res = read_file(p)
    assert res.format == "messages"
    assert len(res.rows) == len(REASONS) + 1
    assert len(res.rejects) == len(REASONS)
    for reject, (_, reason) in zip(res.rejects, REASONS):
        assert reason in reject["reason"], (reject, reason)
        assert set(reject) == {"file", "line", "reason", "raw"}
    assert [r["line"] for r in res.rejects] == [2 * i + 2 for i in range(len(REASONS))]


def test_unreadable_files(tmp_path):
    with pytest.raises(UnreadableFile, match="no such file"):
        read_file(tmp_path / "missing.jsonl")
    with pytest.raises(UnreadableFile, match="is a directory"):
        read_file(tmp_path, "messages")
    (tmp_path / "x.jsonl").write_text('{"foo": 1}\n')
    with pytest.raises(UnreadableFile, match="cannot detect the format"):
        read_file(tmp_path / "x.jsonl")
    (tmp_path / "y.csv").write_text("question,answer\na,b\n")
    with pytest.raises(UnreadableFile, match="lacks column"):
        read_file(tmp_path / "y.csv")


def test_cli_validate_json_and_rejects_file(tmp_path):
    good = conv((U, "hello"), (A, "hi"))
    p = jsonl(tmp_path, "broken.jsonl", [good, good], {1: b"{oops", 2: b'"a string"'})
    rej = tmp_path / "rejects.jsonl"
    r = runner.invoke(app, ["data", "validate", str(p), "--rejects", str(rej), "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.stdout)
    assert out == {"files": [{"file": str(p), "format": "messages", "kept": 2, "rejected": 2}],
                   "kept": 2, "rejected": 2}
    rejects = [json.loads(line) for line in rej.read_text().splitlines()]
    assert [(x["line"], x["raw"]) for x in rejects] == [(2, "{oops"), (3, '"a string"')]

    r = runner.invoke(app, ["data", "validate", str(p), str(tmp_path / "nope.jsonl")])
    assert r.exit_code == 1 and "no such file" in r.output and "broken.jsonl" in r.output
