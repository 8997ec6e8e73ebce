//! The book's API reference pages (docs/reference/) are what `mxcred-operator reference` prints
//! from the CRDs, and they have a row for every field of every CRD, in the section of the object
//! that holds it.

use serde_json::Value;
use std::collections::BTreeMap;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn committed_reference_pages_are_current() {
    let pages = mxcred_operator::reference::references();
    assert_eq!(pages.len(), mxcred_operator::crds().len(), "a page per CRD");
    for (file, page) in pages {
        let committed = std::fs::read_to_string(format!("{ROOT}/docs/reference/{file}"))
            .unwrap_or_else(|e| panic!("docs/reference/{file}: {e}: run `make reference`"));
        assert!(
            committed == page,
            "docs/reference/{file} is stale: run `make reference`"
        );
    }
}

/// The sections of a page: heading `` ## `path` `` to the rows below it.
fn sections(page: &str) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in page.lines() {
        if let Some(path) = line.strip_prefix("## `").and_then(|l| l.strip_suffix('`')) {
            current = Some(path.to_owned());
            out.entry(path.to_owned()).or_default();
        } else if let Some(path) = &current
            && line.starts_with("| `")
        {
            out.get_mut(path).unwrap().push(line.to_owned());
        }
    }
    out
}

/// Every object of a schema that has fields, by path (`spec.target`, `status.conditions[]`),
/// with the names of its fields.
fn objects(path: &str, schema: &Value, out: &mut Vec<(String, Vec<String>)>) {
    if let Some(props) = schema["properties"].as_object() {
        if !path.is_empty() {
            out.push((path.to_owned(), props.keys().cloned().collect()));
        }
        for (name, sub) in props {
            if path.is_empty() && ["metadata", "apiVersion", "kind"].contains(&name.as_str()) {
                continue;
            }
            let sub_path = if path.is_empty() {
                name.clone()
            } else {
                format!("{path}.{name}")
            };
            objects(&sub_path, sub, out);
        }
    } else if let Some(items) = schema.get("items") {
        objects(&format!("{path}[]"), items, out);
    } else if let Some(values) = schema.get("additionalProperties") {
        objects(&format!("{path}.*"), values, out);
    }
}

#[test]
fn every_field_of_the_crds_has_a_row_with_its_description() {
    let pages: BTreeMap<String, String> = mxcred_operator::reference::references()
        .into_iter()
        .collect();
    let mut fields = 0;
    for (_, yaml) in mxcred_operator::crds() {
        let crd: Value = serde_yaml::from_str(&yaml).unwrap();
        let kind = crd["spec"]["names"]["kind"].as_str().unwrap();
        let page = &pages[&format!("{}.md", kind.to_lowercase())];
        let sections = sections(page);
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut found = vec![];
        objects("", schema, &mut found);
        assert!(found.iter().any(|(p, _)| p == "spec.sourceRef"), "{kind}");
        for (path, names) in found {
            let rows = sections
                .get(&path)
                .unwrap_or_else(|| panic!("{kind}: no section for {path}"));
            for name in names {
                let row = rows
                    .iter()
                    .find(|r| r.starts_with(&format!("| `{name}` |")))
                    .unwrap_or_else(|| panic!("{kind}: no row for {path}.{name}"));
                let field = &crd_field(schema, &path)["properties"][&name];
                if let Some(description) = field["description"].as_str() {
                    let first = description.split_whitespace().next().unwrap();
                    assert!(row.contains(first), "{kind} {path}.{name}: {row}");
                }
                fields += 1;
            }
        }
    }
    assert!(fields > 60, "only {fields} fields");
}

/// The schema of the object at `path` (as [`objects`] names it).
fn crd_field<'a>(schema: &'a Value, path: &str) -> &'a Value {
    let mut at = schema;
    for part in path.split('.') {
        let (name, items) = match part.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (part, false),
        };
        at = if name == "*" {
            &at["additionalProperties"]
        } else {
            &at["properties"][name]
        };
        if items {
            at = &at["items"];
        }
    }
    at
}

#[test]
fn the_reference_command_prints_one_page_or_refuses() {
    let bin = env!("CARGO_BIN_EXE_mxcred-operator");
    let out = Command::new(bin)
        .args(["reference", "--file", "clustermendixcredential.md"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let pages: BTreeMap<String, String> = mxcred_operator::reference::references()
        .into_iter()
        .collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        pages["clustermendixcredential.md"]
    );
    let out = Command::new(bin)
        .args(["reference", "--file", "nothing.md"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
