"""The step-tool registry: JSON -> proto -> the one check, for every tool, without any service."""

from __future__ import annotations

from typing import Any

import pytest
from google.protobuf import duration_pb2
from pydantic import ValidationError

from corral.config import Settings
from corral.schema import TaskRequest
from corral.steps import TOOL_NAMES, TOOLS, InvalidTask, check_spec, describe, needs_desktop, step_tool
from corral.v1 import gui_pb2, task_pb2

SETTINGS = Settings(max_step_timeout_seconds=3600)


def proto(*steps: dict[str, Any], **task: Any) -> task_pb2.TaskSpec:
    return TaskRequest.model_validate({"steps": list(steps), **task}).to_proto()


def test_every_tool_is_a_field_of_the_proto_step_oneof() -> None:
    oneof = [f.name for f in task_pb2.Step.DESCRIPTOR.oneofs_by_name["action"].fields]
    assert list(TOOL_NAMES) == oneof
    for name, tool in TOOLS.items():
        assert tool.name == name


@pytest.mark.parametrize(
    ("step", "description"),
    [
        ({"tool": "shell", "command": "ls -la"}, "ls -la"),
        ({"tool": "python", "code": "print(1)"}, "print(1)"),
        ({"tool": "typescript", "code": "let x = 1"}, "let x = 1"),
        ({"tool": "read_file", "path": "a.txt"}, "read a.txt"),
        ({"tool": "write_file", "path": "a.txt", "content": "héllo"}, "write a.txt (6 bytes)"),
        ({"tool": "gui", "action": "double_click", "x": 3, "y": 4}, "gui double_click"),
    ],
)
def test_json_steps_map_to_proto_check_and_describe(step: dict[str, Any], description: str) -> None:
    spec = proto(step)
    check_spec(spec, SETTINGS)
    assert step_tool(spec.steps[0]) == step["tool"]
    assert describe(spec.steps[0]) == description


def test_gui_json_maps_onto_the_gui_services_requests() -> None:
    spec = proto(
        {"tool": "gui", "action": "click", "x": 1, "y": 2, "button": "right", "count": 2},
        {"tool": "gui", "action": "triple_click", "x": 5, "y": 6},
        {"tool": "gui", "action": "drag", "x": 1, "y": 2, "to_x": 3, "to_y": 4},
        {"tool": "gui", "action": "scroll", "direction": "up"},
        {"tool": "gui", "action": "key", "text": "ctrl+c"},
        {"tool": "gui", "action": "screenshot", "max_width": 512},
        {"tool": "gui", "action": "move", "x": 9, "y": 9, "screenshot_after": True, "max_height": 100},
    )
    gui = [s.gui for s in spec.steps]
    assert gui[0].click == gui_pb2.ClickRequest(x=1, y=2, button=gui_pb2.MOUSE_BUTTON_RIGHT, count=2)
    assert gui[1].triple_click.count == 3
    assert gui[2].drag == gui_pb2.DragRequest(from_x=1, from_y=2, to_x=3, to_y=4, button=gui_pb2.MOUSE_BUTTON_LEFT)
    assert gui[3].scroll.direction == gui_pb2.SCROLL_DIRECTION_UP and gui[3].scroll.amount == 1
    assert gui[4].key.keys == "ctrl+c"  # the older `text` spelling still works
    assert gui[5].screenshot.max_width == 512
    assert gui[6].screenshot_after and gui[6].max_height == 100
    assert needs_desktop(spec)
    assert not needs_desktop(proto({"tool": "shell", "command": "true"}))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (task_pb2.TaskSpec(), "a task needs at least one step"),
        (task_pb2.TaskSpec(steps=[task_pb2.Step()]), "steps[0] has no action (set one of: shell,"),
        (task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction())]), "steps[0].shell.command is empty"),
        (task_pb2.TaskSpec(steps=[task_pb2.Step(python=task_pb2.PythonAction())]), "steps[0].python.code is empty"),
        (task_pb2.TaskSpec(steps=[task_pb2.Step(read_file=task_pb2.ReadFileAction())]), "steps[0].read_file.path is empty"),
        (task_pb2.TaskSpec(steps=[task_pb2.Step(gui=task_pb2.GuiAction())]), "steps[0].gui has no action"),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(gui=task_pb2.GuiAction(key=gui_pb2.PressKeyRequest(keys="ctrl+nope")))]),
            "steps[0].gui.key.keys: unknown key 'nope'",
        ),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(gui=task_pb2.GuiAction(click=gui_pb2.ClickRequest(count=7)))]),
            "steps[0].gui.click.count must be 1, 2 or 3",
        ),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(gui=task_pb2.GuiAction(click=gui_pb2.ClickRequest(button=9)))]),  # type: ignore[arg-type]
            "steps[0].gui.click.button 9 is not a mouse button",
        ),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(gui=task_pb2.GuiAction(scroll=gui_pb2.ScrollRequest(amount=500)))]),
            "steps[0].gui.scroll.amount must be between 1 and 200",
        ),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(gui=task_pb2.GuiAction(wait_window=task_pb2.WaitWindowAction()))]),
            "steps[0].gui.wait_window.text is empty",
        ),
        (
            task_pb2.TaskSpec(
                steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"), timeout=duration_pb2.Duration(seconds=4000))]
            ),
            "steps[0].timeout 4000s exceeds this deployment's maximum of 3600s",
        ),
        (
            task_pb2.TaskSpec(
                steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"))], step_timeout=duration_pb2.Duration(seconds=-1)
            ),
            "step_timeout must be positive",
        ),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"))], env={"A=B": "1"}),
            "env has an invalid variable name 'A=B'",
        ),
        (
            task_pb2.TaskSpec(steps=[task_pb2.Step(shell=task_pb2.ShellAction(command="x"))], limits=task_pb2.Limits(memory_mb=10**9)),
            "limits.memory_mb 1000000000 exceeds this deployment's maximum",
        ),
    ],
)
def test_check_spec_names_the_field(spec: task_pb2.TaskSpec, message: str) -> None:
    with pytest.raises(InvalidTask) as err:
        check_spec(spec, SETTINGS)
    assert message in str(err.value)
    assert isinstance(err.value, ValueError)  # an InvalidArgument, also a ValueError


@pytest.mark.parametrize(
    "step",
    [
        {"tool": "gui", "action": "clik"},
        {"tool": "gui", "action": "click", "button": "lefty"},
        {"tool": "gui", "action": "click", "count": 4},
        {"tool": "gui", "action": "scroll", "direction": "sideways"},
        {"tool": "gui", "action": "key", "keys": "no-such-key"},
        {"tool": "gui", "action": "screenshot", "text": "irrelevant"},
        {"tool": "gui", "action": "focus_window"},
        {"tool": "shell", "command": ""},
        {"tool": "shell", "command": "x", "timeout": 0},
    ],
)
def test_json_models_refuse_what_the_check_would(step: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        TaskRequest.model_validate({"steps": [step]})


def test_list_files_defaults_to_the_task_directory() -> None:
    spec = proto({"tool": "list_files"}, {"tool": "list_files", "path": "src"})
    check_spec(spec, SETTINGS)
    assert [s.list_files.path for s in spec.steps] == [".", "src"]
    assert describe(spec.steps[1]) == "list src"
    with pytest.raises(InvalidTask, match=r"steps\[0\]\.list_files\.path is empty"):
        check_spec(task_pb2.TaskSpec(steps=[task_pb2.Step(list_files=task_pb2.ListFilesAction())]), SETTINGS)
