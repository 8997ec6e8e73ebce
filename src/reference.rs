//! The API reference pages of the book (`docs/reference/`), generated from the CRDs: every field
//! of each kind with its type, whether it is required, its default, its bounds, the validation
//! rules the API server checks and its description. `mxcred-operator reference` prints them;
//! `make reference` writes them; a test fails when the committed pages are stale.

use serde_json::Value;
use std::fmt::Write;

/// Every reference page: its file name under `docs/reference/` and its Markdown, one per CRD of
/// [`crate::crds`], in the same order.
pub fn references() -> Vec<(String, String)> {
    crate::crds()
        .iter()
        .map(|(_, yaml)| {
            let crd: Value = serde_yaml::from_str(yaml).expect("a CRD is YAML");
            let kind = crd["spec"]["names"]["kind"].as_str().unwrap_or_default();
            (format!("{}.md", kind.to_lowercase()), page(&crd))
        })
        .collect()
}

/// The reference page of one CRD.
pub fn page(crd: &Value) -> String {
    let spec = &crd["spec"];
    let names = &spec["names"];
    let kind = names["kind"].as_str().unwrap_or_default();
    let mut out = String::new();
    let _ = writeln!(out, "# {kind}\n");
    out.push_str(
        "<!-- Generated from the CRD by `mxcred-operator reference` (`make reference`): edit the doc\n     comments of the Rust types, not this file. -->\n\n",
    );
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str())
            .map(|s| format!("`{s}`"))
            .collect()
    };
    let _ = writeln!(out, "| | |\n|---|---|");
    let _ = writeln!(
        out,
        "| CRD | `{}` |",
        crd["metadata"]["name"].as_str().unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "| group | `{}` |",
        spec["group"].as_str().unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "| scope | {} |",
        spec["scope"].as_str().unwrap_or_default()
    );
    for (label, key) in [("short names", "shortNames"), ("categories", "categories")] {
        let values = strings(&names[key]);
        if !values.is_empty() {
            let _ = writeln!(out, "| {label} | {} |", values.join(", "));
        }
    }
    for version in spec["versions"].as_array().into_iter().flatten() {
        let name = version["name"].as_str().unwrap_or_default();
        let group = spec["group"].as_str().unwrap_or_default();
        let _ = writeln!(out, "| apiVersion | `{group}/{name}` |");
        let schema = &version["schema"]["openAPIV3Schema"];
        out.push('\n');
        if let Some(text) = schema["description"].as_str() {
            let _ = writeln!(out, "{}\n", paragraphs(text));
        }
        printer_columns(&mut out, version);
        rules(&mut out, schema);
        let mut sections = vec![];
        for (field, sub) in properties(schema) {
            if field != "metadata" && field != "apiVersion" && field != "kind" {
                collect(field.to_owned(), sub, &mut sections);
            }
        }
        for (path, schema) in sections {
            section(&mut out, &path, schema);
        }
    }
    out.truncate(out.trim_end().len());
    out.push('\n');
    out
}

fn printer_columns(out: &mut String, version: &Value) {
    let columns = version["additionalPrinterColumns"].as_array();
    let Some(columns) = columns.filter(|c| !c.is_empty()) else {
        return;
    };
    out.push_str("`kubectl get` shows:\n\n| column | from |\n|---|---|\n");
    for column in columns {
        let _ = writeln!(
            out,
            "| {} | {} |",
            column["name"].as_str().unwrap_or_default(),
            code(column["jsonPath"].as_str().unwrap_or_default())
        );
    }
    out.push('\n');
}

/// The validation rules of an object, as the API server states them when it refuses one.
fn rules(out: &mut String, schema: &Value) {
    let messages = rule_messages(schema);
    if !messages.is_empty() {
        out.push_str("Refused when applied (validation rules):\n\n");
        for message in messages {
            let _ = writeln!(out, "- {}", escape(&message));
        }
        out.push('\n');
    }
}

fn rule_messages(schema: &Value) -> Vec<String> {
    schema["x-kubernetes-validations"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|rule| {
            rule["message"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| format!("`{}`", rule["rule"].as_str().unwrap_or_default()))
        })
        .collect()
}

fn properties(schema: &Value) -> Vec<(&str, &Value)> {
    schema["properties"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v))
        .collect()
}

/// The objects to give a section: `path` itself when it has fields, then those below it, depth
/// first. Items of a list of objects are a section of their own (`path[]`).
fn collect<'a>(path: String, schema: &'a Value, sections: &mut Vec<(String, &'a Value)>) {
    if schema.get("properties").is_some() {
        sections.push((path.clone(), schema));
        for (field, sub) in properties(schema) {
            collect(format!("{path}.{field}"), sub, sections);
        }
    } else if let Some(items) = schema.get("items") {
        collect(format!("{path}[]"), items, sections);
    } else if let Some(values) = schema.get("additionalProperties")
        && values.get("properties").is_some()
    {
        collect(format!("{path}.*"), values, sections);
    }
}

fn section(out: &mut String, path: &str, schema: &Value) {
    let _ = writeln!(out, "## `{path}`\n");
    if let Some(text) = schema["description"].as_str() {
        let _ = writeln!(out, "{}\n", paragraphs(text));
    }
    rules(out, schema);
    let required: Vec<&str> = schema["required"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r.as_str())
        .collect();
    out.push_str("| field | type | required | default | description |\n|---|---|---|---|---|\n");
    for (field, sub) in properties(schema) {
        let description = sub["description"].as_str().unwrap_or_default();
        let default = match sub.get("default") {
            Some(value) => code(&value.to_string()),
            None => stated_default(&paragraphs(description))
                .map(escape)
                .unwrap_or_default(),
        };
        let mut text = escape(&paragraphs(description)).replace("\n\n", "<br><br>");
        let constraints = constraints(sub);
        if !constraints.is_empty() {
            if !text.is_empty() {
                text.push_str("<br>");
            }
            text.push_str(&constraints.join("; "));
        }
        let _ = writeln!(
            out,
            "| `{field}` | {} | {} | {default} | {text} |",
            type_of(&format!("{path}.{field}"), sub),
            if required.contains(&field) { "yes" } else { "" },
        );
    }
    out.push('\n');
}

/// The type of a field, linked to the section of its fields when it has some.
fn type_of(path: &str, schema: &Value) -> String {
    let link = |label: &str, target: String| format!("[{label}](#{})", anchor(&target));
    if schema.get("properties").is_some() {
        return link("object", path.to_owned());
    }
    if schema.get("x-kubernetes-int-or-string").is_some() {
        return "integer or string".into();
    }
    match schema["type"].as_str() {
        Some("array") => {
            let items = &schema["items"];
            if items.get("properties").is_some() {
                link("list of objects", format!("{path}[]"))
            } else {
                format!("list of {}", type_of(&format!("{path}[]"), items))
            }
        }
        Some("object") => match schema.get("additionalProperties") {
            Some(values) if values.get("properties").is_some() => {
                link("map of objects", format!("{path}.*"))
            }
            Some(values) => format!("map of {}", type_of(&format!("{path}.*"), values)),
            None => "object".into(),
        },
        Some(t) => match schema["format"].as_str() {
            Some(format) => format!("{t} ({format})"),
            None => t.to_owned(),
        },
        None if schema.get("x-kubernetes-preserve-unknown-fields").is_some() => "any".into(),
        None => String::new(),
    }
}

/// Enum values, bounds, patterns and validation rules of a field (and of its items or values).
fn constraints(schema: &Value) -> Vec<String> {
    let mut out = vec![];
    if let Some(values) = schema["enum"].as_array() {
        let values: Vec<String> = values
            .iter()
            .map(|v| code(v.as_str().map_or(v.to_string(), str::to_owned).as_str()))
            .collect();
        out.push(format!("one of {}", values.join(", ")));
    }
    for (key, text, unit) in [
        ("minLength", "at least", " character"),
        ("maxLength", "at most", " character"),
        ("minItems", "at least", " item"),
        ("maxItems", "at most", " item"),
        ("minProperties", "at least", " entry"),
        ("maxProperties", "at most", " entry"),
        ("minimum", "at least", ""),
        ("maximum", "at most", ""),
    ] {
        if let Some(n) = schema[key].as_f64() {
            let plural = match (unit, n == 1.0) {
                (_, true) | ("", _) => unit.to_owned(),
                (" entry", false) => " entries".to_owned(),
                (_, false) => format!("{unit}s"),
            };
            out.push(format!("{text} {n}{plural}"));
        }
    }
    if let Some(pattern) = schema["pattern"].as_str() {
        out.push(format!("pattern {}", code(pattern)));
    }
    if let Some(keys) = schema["x-kubernetes-list-map-keys"].as_array() {
        let keys: Vec<String> = keys
            .iter()
            .filter_map(|k| k.as_str())
            .map(|k| format!("`{k}`"))
            .collect();
        out.push(format!("unique by {}", keys.join(" and ")));
    }
    for message in rule_messages(schema) {
        out.push(format!("refused when applied: {}", escape(&message)));
    }
    for (key, what) in [
        ("items", "each item"),
        ("additionalProperties", "each value"),
    ] {
        if let Some(inner) = schema.get(key)
            && inner.get("properties").is_none()
        {
            let inner = constraints(inner);
            if !inner.is_empty() {
                out.push(format!("{what}: {}", inner.join(", ")));
            }
        }
    }
    out
}

/// The default a description (its lines joined) states ("Defaults to X."): the API server
/// applies none, the operator does.
fn stated_default(description: &str) -> Option<&str> {
    let start = description.find("Defaults to ")? + "Defaults to ".len();
    let rest = &description[start..];
    let end = rest
        .match_indices('.')
        .map(|(i, _)| i)
        .find(|&i| rest[i + 1..].is_empty() || rest[i + 1..].starts_with(char::is_whitespace))
        .unwrap_or(rest.len());
    Some(rest[..end].trim())
}

/// The lines of each paragraph of a description joined (descriptions come from doc comments).
fn paragraphs(text: &str) -> String {
    text.split("\n\n")
        .map(|p| p.split_whitespace().collect::<Vec<_>>().join(" "))
        .filter(|p| !p.is_empty())
        .collect::<Vec<_>>()
        .join("\n\n")
}

/// Text for a table cell: `|` escaped everywhere (GitHub and mdBook take `\|` in code spans too),
/// `<`, `>` and `&` outside code spans made entities, so that `<name>` is not read as HTML.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_code = false;
    for c in text.chars() {
        match c {
            '`' => {
                in_code = !in_code;
                out.push(c);
            }
            '|' => out.push_str("\\|"),
            '<' if !in_code => out.push_str("&lt;"),
            '>' if !in_code => out.push_str("&gt;"),
            '&' if !in_code => out.push_str("&amp;"),
            '*' | '_' if !in_code => {
                out.push('\\');
                out.push(c);
            }
            _ => out.push(c),
        }
    }
    out
}

/// A code span for a cell, with `|` escaped.
fn code(text: &str) -> String {
    let fence = if text.contains('`') { "`` " } else { "`" };
    let close = if text.contains('`') { " ``" } else { "`" };
    format!("{fence}{}{close}", text.replace('|', "\\|"))
}

/// The anchor mdBook (and GitHub) give a heading `` `path` ``: lower case, letters, digits, `-`
/// and `_` kept, spaces made `-`, everything else dropped.
pub fn anchor(heading: &str) -> String {
    heading
        .chars()
        .filter_map(|c| match c {
            c if c.is_alphanumeric() || c == '_' || c == '-' => Some(c.to_lowercase().next()?),
            ' ' => Some('-'),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_stated_default_is_the_sentence_after_defaults_to() {
        assert_eq!(
            stated_default("Key of the token. Defaults to \"token\"."),
            Some("\"token\"")
        );
        assert_eq!(
            stated_default(&paragraphs(
                "Time between checks. At least 1m. Defaults\nto the operator's default interval (1h)."
            )),
            Some("the operator's default interval (1h)")
        );
        assert_eq!(stated_default("Name of the workload."), None);
        assert_eq!(
            stated_default("Defaults to mxcred.io/v1 for now"),
            Some("mxcred.io/v1 for now")
        );
    }

    #[test]
    fn cells_keep_code_and_do_not_open_html() {
        assert_eq!(
            escape("annotation restart.mxcred.io/<name> or `a|b <c>`"),
            "annotation restart.mxcred.io/&lt;name&gt; or `a\\|b <c>`"
        );
        assert_eq!(escape("snake_case * x"), "snake\\_case \\* x");
    }

    #[test]
    fn anchors_are_those_of_mdbook() {
        assert_eq!(
            anchor("`spec.target.rolloutRestart[]`"),
            "spectargetrolloutrestart"
        );
        assert_eq!(anchor("The CRDs"), "the-crds");
    }

    #[test]
    fn every_field_is_a_row_with_its_type_and_bounds() {
        let crd = json!({
            "metadata": {"name": "things.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Namespaced",
                "names": {"kind": "Thing", "shortNames": ["th"]},
                "versions": [{
                    "name": "v1",
                    "schema": {"openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["name"],
                                "x-kubernetes-validations": [{"rule": "true", "message": "a rule"}],
                                "properties": {
                                    "name": {"type": "string", "minLength": 1, "maxLength": 253, "description": "The name."},
                                    "mode": {"type": "string", "enum": ["A", "B"], "description": "Mode. Defaults\nto A."},
                                    "items": {"type": "array", "items": {"type": "object", "properties": {"k": {"type": "integer", "format": "int64"}}}},
                                    "labels": {"type": "object", "additionalProperties": {"type": "string", "maxLength": 63}}
                                }
                            }
                        }
                    }}
                }]
            }
        });
        let page = page(&crd);
        for row in [
            "| `name` | string | yes |  | The name.<br>at least 1 character; at most 253 characters |",
            "| `mode` | string |  | A | Mode. Defaults to A.<br>one of `A`, `B` |",
            "| `items` | [list of objects](#specitems) |  |  |  |",
            "| `labels` | map of string |  |  | each value: at most 63 characters |",
            "| `k` | integer (int64) |  |  |  |",
            "## `spec.items[]`",
            "- a rule",
            "| short names | `th` |",
        ] {
            assert!(page.contains(row), "{row} missing from:\n{page}");
        }
    }
}
