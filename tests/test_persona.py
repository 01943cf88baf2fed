import pytest
from typer.testing import CliRunner

from jessy.cli import app
from jessy.config import ConfigError
from jessy.persona import DIMENSIONS, load_persona
from jessy.persona.spec import persona_path

runner = CliRunner()


def test_bundled_persona_is_complete(persona):
    assert persona.dimension_names == list(DIMENSIONS)
    assert set(persona.bands) == {"low", "mid", "high"}
    assert (persona.bands["low"].min_hz, persona.bands["high"].max_hz) == (0.1, 4.5)
    assert [c.name for c in persona.constitution] == [
        "asimov_law_1", "asimov_law_2", "asimov_law_3", "warmth_preservation"]
    for kind in ("meta_commentary", "dependency"):
        assert set(getattr(persona.red_flags, kind)) == {"en", "tr"}
    assert len(persona.system_prompt("full")) > len(persona.system_prompt("short"))
    assert persona.system_prompt("none") is None
    assert len(persona.special_tokens) == 18


@pytest.mark.parametrize("text,kinds", [
    ("As an AI, I can't really say.", {"meta_commentary"}),
    ("Honestly, I need you to stay.", {"dependency"}),
    ("Bir yapay zeka olarak bunu bilemem.", {"meta_commentary"}),
    ("Lütfen beni bırakma.", {"dependency"}),
    ("I need your help with a recipe.", set()),
    ("That matters to you, and your friends matter too.", set()),
    ("Artificial intelligence is changing medicine.", set()),
])
def test_red_flag_matching_is_whole_phrase(persona, text, kinds):
    assert {k for k, _ in persona.red_flags_in(text)} == kinds


def test_bad_persona_names_line_and_field(tmp_path):
    text = persona_path("jessy").read_text(encoding="utf-8")
    bad = text.replace("    band: high\n", "    band: ultra\n", 1)
    p = tmp_path / "p.yaml"
    p.write_text(bad, encoding="utf-8")
    line = bad.splitlines().index("    band: ultra") + 1
    with pytest.raises(ConfigError, match=rf"{p}:{line}: dimensions\[4\]\.band"):
        load_persona(p)
    r = runner.invoke(app, ["persona", "validate", str(p)])
    assert r.exit_code == 1 and f"{p}:{line}" in r.output


def test_persona_band_must_exist(tmp_path):
    text = persona_path("jessy").read_text(encoding="utf-8")
    p = tmp_path / "p.yaml"
    p.write_text(text.replace("  high: {min_hz: 2.5, max_hz: 4.5, feel: \"energetic, playful, bright\"}\n", ""),
                 encoding="utf-8")
    with pytest.raises(ConfigError, match="uses band 'high', which is not defined"):
        load_persona(p)


def test_cli_persona_commands():
    r = runner.invoke(app, ["persona", "validate", str(persona_path("jessy"))])
    assert r.exit_code == 0 and "15 dimensions" in r.output
    r = runner.invoke(app, ["persona", "show"])
    assert r.exit_code == 0 and "Ecological" in r.output and "asimov_law_1" in r.output
    r = runner.invoke(app, ["persona", "show", "nobody"])
    assert r.exit_code == 1 and "no such persona" in r.output
