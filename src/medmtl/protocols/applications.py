"""Applications: one study run on several main tasks, each with its own overrides and task list."""
from __future__ import annotations

from medmtl.config import apply_dotted, override_config
from medmtl.errors import ConfigError


def application_config(cfg, name: str, app):
    """The config of one application: its overrides, its main task, its tasks for multi-task arms.

    Only the application's tasks (and the tasks its arms name) are kept, so its data are prepared
    and guarded against leakage on their own.
    """
    where = f"experiment.applications.{name}"

    def narrow(raw: dict) -> None:
        exp = raw["experiment"]
        exp["main_task"], exp["applications"] = app.main_task, {}
        keep = {app.main_task, *(app.tasks or [])}
        for arm in exp["arms"]:
            if arm["tasks"] is None and arm["strategy"] in ("mtl", "joint") and app.tasks:
                arm["tasks"] = list(app.tasks)
            keep.update(arm["tasks"] or [])
            keep.update(arm["source"] or [])
        declared = {t["name"] for t in raw["tasks"]}
        if keep - declared:
            raise ConfigError(f"{where}: tasks {sorted(keep - declared)} are not declared in tasks; "
                              f"declared: {sorted(declared)}")
        raw["tasks"] = [t for t in raw["tasks"] if t["name"] in keep]

    def edit(raw: dict) -> None:
        # the application's overrides first: they may change the arms whose tasks are kept
        apply_dotted(raw, app.overrides, what=f"{where}: override")
        narrow(raw)

    return override_config(cfg, {}, where, edit=edit)
