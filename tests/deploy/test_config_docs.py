"""docs/configuration.md is the settings model, rendered: current, complete, and rendered correctly.

The generator reads `core.settings.Settings` (fields, defaults, bounds) and the comments beside each
field. The toy model below has one of every shape the generator must render, with known answers.
"""

from __future__ import annotations

from pathlib import Path

from deploy_support import REPO_ROOT, load_deploy_module
from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

DOC = REPO_ROOT / "docs" / "configuration.md"


class ToySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TIMEMARK_")

    # --- places -------------------------------------------------------------------
    data_dir: Path = Path(".timemark")
    database_url: str | None = None  # None: SQLite under data_dir
    # --- limits -------------------------------------------------------------------
    # Bytes per request body; the proxy in front may cap it lower.
    max_body_bytes: int = Field(default=1024, ge=1024, le=4096)
    ratio: float = Field(default=0.5, gt=0, lt=1, description="from Field(description=...)")
    hosts: tuple[str, ...] = ("a", "b")
    secret_key: SecretStr = SecretStr("change-me")
    embedded: bool = False


def rows(page: str) -> dict[str, list[str]]:
    table = [line for line in page.splitlines() if line.startswith("| `TIMEMARK_")]
    cells = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in table]
    return {row[0].strip("`"): row for row in cells}


def test_generator_renders_groups_types_defaults_bounds_and_comments() -> None:
    table = rows(load_deploy_module("gen_config_docs").render(ToySettings))
    assert list(table) == [f"TIMEMARK_{name.upper()}" for name in ToySettings.model_fields]
    assert table["TIMEMARK_DATA_DIR"][1:4] == ["places", "`Path`", "`.timemark`"]
    assert table["TIMEMARK_DATABASE_URL"][2:4] == ["`str \\| None`", "unset"]
    assert table["TIMEMARK_DATABASE_URL"][5] == "None: SQLite under data_dir"
    body = table["TIMEMARK_MAX_BODY_BYTES"]
    assert body[1] == "limits" and body[4] == "≥ 1024, ≤ 4096"
    assert body[5] == "Bytes per request body; the proxy in front may cap it lower."
    assert table["TIMEMARK_RATIO"][4:] == ["> 0, < 1", "from Field(description=...)"]
    assert table["TIMEMARK_HOSTS"][3] == '`["a", "b"]`'
    assert table["TIMEMARK_SECRET_KEY"][3] == "`change-me`"
    assert table["TIMEMARK_EMBEDDED"][3] == "`false`"


def test_configuration_page_is_current_and_lists_every_setting() -> None:
    from core.settings import Settings

    generator = load_deploy_module("gen_config_docs")
    assert DOC.read_text() == generator.render(), (
        "docs/configuration.md is stale: run python deploy/gen_config_docs.py"
    )
    assert set(rows(DOC.read_text())) == {f"TIMEMARK_{name.upper()}" for name in Settings.model_fields}


def test_check_mode_fails_on_a_stale_page(tmp_path: Path, monkeypatch) -> None:
    generator = load_deploy_module("gen_config_docs")
    stale = tmp_path / "configuration.md"
    stale.write_text(generator.render().replace("TIMEMARK_SECRET_KEY", "TIMEMARK_OLD_NAME"))
    monkeypatch.setattr(generator, "DOC_PATH", stale)
    assert generator.main(["--check"]) == 1
    assert generator.main([]) == 0 and generator.main(["--check"]) == 0
