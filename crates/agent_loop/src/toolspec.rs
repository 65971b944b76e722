//! The tools the model is offered, as OpenAI function calling declares them (OpenHands'
//! CodeAct tools); `tools` carries them out.

use serde_json::{json, Value};

/// The tool definitions sent with every call (OpenAI function calling).
pub fn definitions() -> Value {
    let risk = json!({ "type": "string", "enum": ["LOW", "MEDIUM", "HIGH"],
                       "description": "How risky the action is." });
    json!([
        { "type": "function", "function": {
            "name": "execute_bash",
            "description": "Execute a bash command in the workspace. A command that prints nothing for 10 seconds (or runs past `timeout`) goes on running: send an empty command to see more of its output, text with `is_input` true to give it input, or C-c / C-d / C-z to interrupt it, end its input or suspend it. The server kills a command after its own limit.",
            "parameters": { "type": "object", "required": ["command"], "properties": {
                "command": { "type": "string", "description": "The bash command to execute." },
                "is_input": { "type": "string", "enum": ["true", "false"], "description": "If true, the command is input to the running process (text, or C-c, C-d, C-z)." },
                "timeout": { "type": "number", "description": "Seconds to wait for the command before returning (soft: it goes on running)." },
                "security_risk": risk,
            } } } },
        { "type": "function", "function": {
            "name": "str_replace_editor",
            "description": "View, create and edit files in the workspace: view, create, str_replace (old_str must occur exactly once), insert (after insert_line), undo_edit.",
            "parameters": { "type": "object", "required": ["command", "path"], "properties": {
                "command": { "type": "string", "enum": ["view", "create", "str_replace", "insert", "undo_edit"] },
                "path": { "type": "string", "description": "A path in the workspace." },
                "file_text": { "type": "string" },
                "old_str": { "type": "string" },
                "new_str": { "type": "string" },
                "insert_line": { "type": "integer" },
                "view_range": { "type": "array", "items": { "type": "integer" } },
                "security_risk": risk,
            } } } },
        { "type": "function", "function": {
            "name": "think",
            "description": "Think about something: it changes nothing and is logged.",
            "parameters": { "type": "object", "required": ["thought"], "properties": {
                "thought": { "type": "string" } } } } },
        { "type": "function", "function": {
            "name": "finish",
            "description": "Finish the task, with a message to the user.",
            "parameters": { "type": "object", "required": ["message"], "properties": {
                "message": { "type": "string" } } } } },
    ])
}
