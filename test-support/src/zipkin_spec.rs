//! Zipkin v2 JSON checked against the official API spec
//! (`specs/zipkin2-api.yaml`, a copy of openzipkin's `zipkin2-api.yaml`,
//! Apache-2.0), read at run time: the schema is the spec's, not ours.
//!
//! The spec is Swagger 2.0; its span model uses a small part of JSON
//! Schema, and [`check`] implements that part: `type`, `required`,
//! `properties`, `additionalProperties`, `enum`, `pattern`, `minLength`,
//! `maxLength`, `minimum`, `items`, `uniqueItems`, `format` (`ipv4`,
//! `ipv6`) and `$ref`. Two choices are stricter than the letter of JSON
//! Schema, on purpose: a `pattern` must match the whole string (the spec's
//! `[a-f0-9]{16}` is meant that way; unanchored it would accept `X` before
//! the id), and an object with `properties` and no `additionalProperties`
//! may carry no other field (a field Zipkin does not define is a bug in the
//! exporter, even if a lenient collector would drop it).

use serde_json::Value as Json;
use serde_norway::Value as Yaml;
use std::sync::OnceLock;

/// The spec's `definitions`.
fn definitions() -> &'static Yaml {
    static DEFS: OnceLock<Yaml> = OnceLock::new();
    DEFS.get_or_init(|| {
        let text = include_str!("../specs/zipkin2-api.yaml");
        let spec: Yaml = serde_norway::from_str(text).expect("zipkin2-api.yaml parses");
        spec["definitions"].clone()
    })
}

/// Checks `value` against the spec's definition `name` (`ListOfSpans`,
/// `Span`...). `Err` lists every violation, each with its JSON path.
pub fn check(name: &str, value: &Json) -> Result<(), String> {
    let schema = definitions()
        .get(name)
        .unwrap_or_else(|| panic!("zipkin2-api.yaml defines no {name}"));
    let mut errors = Vec::new();
    validate(schema, value, "$", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

fn validate(schema: &Yaml, value: &Json, path: &str, errors: &mut Vec<String>) {
    if let Some(reference) = schema.get("$ref").and_then(Yaml::as_str) {
        let name = reference
            .strip_prefix("#/definitions/")
            .unwrap_or_else(|| panic!("unsupported $ref {reference}"));
        let target = definitions()
            .get(name)
            .unwrap_or_else(|| panic!("dangling $ref {reference}"));
        return validate(target, value, path, errors);
    }
    let mut fail = |what: String| errors.push(format!("{path}: {what}"));
    let kind = schema.get("type").and_then(Yaml::as_str);
    let type_ok = match kind {
        None => true,
        Some("object") => value.is_object(),
        Some("array") => value.is_array(),
        Some("string") => value.is_string(),
        Some("integer") => value.is_i64() || value.is_u64(),
        Some("number") => value.is_number(),
        Some("boolean") => value.is_boolean(),
        Some(other) => panic!("unsupported type {other}"),
    };
    if !type_ok {
        fail(format!("{value} is not of type {}", kind.unwrap_or("?")));
        return;
    }
    if let Some(options) = schema.get("enum").and_then(Yaml::as_sequence) {
        let ok = options
            .iter()
            .any(|o| o.as_str().is_some_and(|o| value.as_str() == Some(o)));
        if !ok {
            fail(format!("{value} is not one of {options:?}"));
        }
    }
    if let Some(s) = value.as_str() {
        let len = s.chars().count() as u64;
        if let Some(min) = schema.get("minLength").and_then(Yaml::as_u64)
            && len < min
        {
            fail(format!("{s:?} is shorter than {min}"));
        }
        if let Some(max) = schema.get("maxLength").and_then(Yaml::as_u64)
            && len > max
        {
            fail(format!("{s:?} is longer than {max}"));
        }
        if let Some(pattern) = schema.get("pattern").and_then(Yaml::as_str) {
            let re = regex::Regex::new(&format!("^(?:{pattern})$")).expect("the spec's pattern");
            if !re.is_match(s) {
                fail(format!("{s:?} does not match {pattern}"));
            }
        }
        match schema.get("format").and_then(Yaml::as_str) {
            Some("ipv4") if s.parse::<std::net::Ipv4Addr>().is_err() => {
                fail(format!("{s:?} is not an IPv4 address"));
            }
            Some("ipv6") if s.parse::<std::net::Ipv6Addr>().is_err() => {
                fail(format!("{s:?} is not an IPv6 address"));
            }
            _ => {}
        }
    }
    if let (Some(n), Some(min)) = (value.as_f64(), schema.get("minimum").and_then(Yaml::as_f64))
        && n < min
    {
        fail(format!("{value} is below the minimum {min}"));
    }
    if let Some(list) = value.as_array() {
        if schema.get("uniqueItems").and_then(Yaml::as_bool) == Some(true) {
            for (i, item) in list.iter().enumerate() {
                if list[..i].contains(item) {
                    fail(format!("item {i} repeats an earlier item: {item}"));
                }
            }
        }
        if let Some(items) = schema.get("items") {
            for (i, item) in list.iter().enumerate() {
                validate(items, item, &format!("{path}[{i}]"), errors);
            }
        }
    }
    if let Some(object) = value.as_object() {
        for required in schema
            .get("required")
            .and_then(Yaml::as_sequence)
            .into_iter()
            .flatten()
            .filter_map(Yaml::as_str)
        {
            if !object.contains_key(required) {
                errors.push(format!("{path}: missing the required field {required}"));
            }
        }
        let properties = schema.get("properties").and_then(Yaml::as_mapping);
        let additional = schema.get("additionalProperties");
        for (key, field) in object {
            let field_path = format!("{path}.{key}");
            match properties.and_then(|p| p.get(key.as_str())) {
                Some(field_schema) => validate(field_schema, field, &field_path, errors),
                None => match additional {
                    Some(extra) => validate(extra, field, &field_path, errors),
                    None if properties.is_some() => {
                        errors.push(format!("{field_path}: not a field of the spec's model"));
                    }
                    None => {}
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::check;
    use serde_json::json;

    #[test]
    fn the_specs_own_example_passes() {
        let span = json!({
            "id": "352bff9a74ca9ad2",
            "traceId": "5af7183fb1d4cf5f",
            "parentId": "6b221d5bc9e6496c",
            "name": "get /api",
            "timestamp": 1556604172355737_u64,
            "duration": 1431,
            "kind": "SERVER",
            "localEndpoint": {"serviceName": "backend", "ipv4": "192.168.99.1", "port": 3306},
            "remoteEndpoint": {"ipv4": "172.19.0.2", "port": 58648},
            "tags": {"http.method": "GET", "http.path": "/api"}
        });
        check("ListOfSpans", &json!([span])).unwrap();
    }

    #[test]
    fn each_kind_of_violation_is_named() {
        let bad = json!([{
            "traceId": "5AF7183FB1D4CF5F",
            "id": "352bff9a74ca9ad2x",
            "kind": "INTERNAL",
            "duration": 0,
            "localEndpoint": {"ipv4": "::1"},
            "tags": {"n": 1},
            "status": "OK"
        }, {"id": "352bff9a74ca9ad2"}]);
        let err = check("ListOfSpans", &bad).unwrap_err();
        for want in [
            "$[0].traceId: \"5AF7183FB1D4CF5F\" does not match",
            "$[0].id: \"352bff9a74ca9ad2x\" is longer than 16",
            "$[0].kind: \"INTERNAL\" is not one of",
            "$[0].duration: 0 is below the minimum 1",
            "$[0].localEndpoint.ipv4: \"::1\" is not an IPv4 address",
            "$[0].tags.n: 1 is not of type string",
            "$[0].status: not a field of the spec's model",
            "$[1]: missing the required field traceId",
        ] {
            assert!(err.contains(want), "{want:?} not in {err}");
        }
    }
}
