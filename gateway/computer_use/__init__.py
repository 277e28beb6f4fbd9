"""Anthropic's client-side tools carried out on a long-lived sandbox: `computer` (the desktop,
with display scaling), `bash` (a persistent shell per sandbox) and
`str_replace_based_edit_tool` (a text editor). Each takes the tool's input as the model wrote
it and answers with a tool_result block (gateway/routers/computer_use.py)."""
