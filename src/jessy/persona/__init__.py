"""The persona spec and its loading."""

from jessy.persona.spec import DIMENSIONS, Persona, load_persona, persona_path

__all__ = ["DIMENSIONS", "Persona", "load_persona", "persona_path"]
