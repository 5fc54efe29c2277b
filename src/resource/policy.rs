//! The scope policy: which scope an MCP request needs, decided from the parsed JSON-RPC
//! body (single messages and legacy batches), honouring the scope hierarchy.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;

use crate::config::ScopeConfig;

/// Method and tool -> scope rules, with the hierarchy expanded.
#[derive(Debug, Clone)]
pub struct ScopePolicy {
    /// scope -> every scope it grants, itself included (transitively closed).
    grants: BTreeMap<String, BTreeSet<String>>,
    methods: BTreeMap<String, String>,
    default_method: String,
    tools: BTreeMap<String, String>,
    default_tool: String,
}

impl ScopePolicy {
    /// Build the policy from config.
    pub fn from_config(c: &ScopeConfig) -> Self {
        let mut grants: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for scope in &c.supported {
            let mut closure = BTreeSet::from([scope.clone()]);
            let mut todo = vec![scope.clone()];
            while let Some(s) = todo.pop() {
                for implied in c.implies.get(&s).into_iter().flatten() {
                    if closure.insert(implied.clone()) {
                        todo.push(implied.clone());
                    }
                }
            }
            grants.insert(scope.clone(), closure);
        }
        Self {
            grants,
            methods: c.methods.clone(),
            default_method: c.default_method.clone(),
            tools: c.tools.clone(),
            default_tool: c.default_tool.clone(),
        }
    }

    /// Every scope a token holding `granted` effectively has.
    pub fn effective<'a>(&self, granted: impl IntoIterator<Item = &'a str>) -> BTreeSet<String> {
        let mut out = BTreeSet::new();
        for g in granted {
            match self.grants.get(g) {
                Some(closure) => out.extend(closure.iter().cloned()),
                None => {
                    out.insert(g.to_string());
                }
            }
        }
        out
    }

    /// The scope a method needs, if any.
    pub fn method_scope(&self, method: &str) -> Option<&str> {
        if method.starts_with("notifications/") {
            return None;
        }
        let scope = self.methods.get(method).unwrap_or(&self.default_method);
        (!scope.is_empty()).then_some(scope.as_str())
    }

    /// The scope calling a tool needs, if any.
    pub fn tool_scope(&self, tool: &str) -> Option<&str> {
        let scope = self.tools.get(tool).unwrap_or(&self.default_tool);
        (!scope.is_empty()).then_some(scope.as_str())
    }

    /// Whether a token with `effective` scopes may call `tool`.
    pub fn may_call(&self, effective: &BTreeSet<String>, tool: &str) -> bool {
        self.method_scope("tools/call")
            .into_iter()
            .chain(self.tool_scope(tool))
            .all(|s| effective.contains(s))
    }

    /// The scopes one JSON-RPC message needs: its method's, and for `tools/call` the
    /// tool's. Responses and notifications need none.
    pub fn message_scopes<'a>(&'a self, msg: &'a Value) -> Vec<&'a str> {
        let Some(method) = msg.get("method").and_then(Value::as_str) else {
            return Vec::new();
        };
        let mut needed: Vec<&str> = self.method_scope(method).into_iter().collect();
        if method == "tools/call"
            && let Some(tool) = msg.pointer("/params/name").and_then(Value::as_str)
        {
            needed.extend(self.tool_scope(tool));
        }
        needed
    }

    /// What the body (one message or a batch) needs that `effective` lacks, or `None`
    /// when it is allowed. The answer lists only the scopes this operation needs.
    pub fn missing(&self, body: &Value, effective: &BTreeSet<String>) -> Option<Vec<String>> {
        let messages: Vec<&Value> = match body {
            Value::Array(items) => items.iter().collect(),
            other => vec![other],
        };
        let mut needed = BTreeSet::new();
        for msg in messages {
            needed.extend(self.message_scopes(msg));
        }
        let allowed = needed.iter().all(|s| effective.contains(*s));
        (!allowed).then(|| {
            // Ask for the strongest scopes the operation needs; weaker ones they imply
            // need not be repeated.
            let needed: Vec<&str> = needed.into_iter().collect();
            needed
                .iter()
                .filter(|s| {
                    !needed
                        .iter()
                        .any(|o| o != *s && self.grants.get(*o).is_some_and(|c| c.contains(**s)))
                })
                .map(|s| s.to_string())
                .collect()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn policy() -> ScopePolicy {
        ScopePolicy::from_config(&ScopeConfig::default())
    }

    #[test]
    fn hierarchy_admin_implies_write_and_read() {
        let p = policy();
        let eff = p.effective(["mcp:admin"]);
        assert!(eff.contains("mcp:write") && eff.contains("mcp:read"));
        let eff = p.effective(["mcp:write"]);
        assert!(eff.contains("mcp:read") && !eff.contains("mcp:admin"));
    }

    #[test]
    fn insufficient_scope_lists_only_needed_scope() {
        let p = policy();
        let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add_note","arguments":{}}});
        let eff = p.effective(["mcp:read"]);
        assert_eq!(p.missing(&body, &eff), Some(vec!["mcp:write".to_string()]));
        assert_eq!(p.missing(&body, &p.effective(["mcp:write"])), None);
    }

    #[test]
    fn read_methods_need_read_and_lifecycle_needs_nothing() {
        let p = policy();
        let none = BTreeSet::new();
        for m in ["initialize", "ping", "notifications/initialized"] {
            assert_eq!(
                p.missing(&json!({"jsonrpc":"2.0","id":1,"method":m}), &none),
                None,
                "{m}"
            );
        }
        let list = json!({"jsonrpc":"2.0","id":1,"method":"tools/list"});
        assert_eq!(p.missing(&list, &none), Some(vec!["mcp:read".to_string()]));
    }

    #[test]
    fn batches_need_the_union() {
        let p = policy();
        let batch = json!([
            {"jsonrpc":"2.0","id":1,"method":"tools/list"},
            {"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"add_note"}}
        ]);
        assert_eq!(
            p.missing(&batch, &BTreeSet::new()),
            Some(vec!["mcp:write".to_string()])
        );
        assert_eq!(
            p.missing(&batch, &p.effective(["mcp:read"])),
            Some(vec!["mcp:write".to_string()])
        );
    }

    #[test]
    fn may_call_filters_tools() {
        let p = policy();
        let read = p.effective(["mcp:read"]);
        assert!(p.may_call(&read, "echo"));
        assert!(!p.may_call(&read, "add_note"));
    }
}
