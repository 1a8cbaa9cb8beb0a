//! `l7inspect-sidecar inject`: add l7inspect to Kubernetes workloads, as
//! `linkerd inject` does.
//!
//! [`inject_documents`] reads a YAML stream (one or more documents, or JSON)
//! and adds to the pod template of every Deployment, StatefulSet, DaemonSet,
//! ReplicaSet, ReplicationController, Job, CronJob (its job template) and
//! Pod, including those inside a `kind: List`, what [`POD_PATCH`] holds:
//!
//! - the `l7inspect-init` init container and the `l7inspect-sidecar` native
//!   sidecar, first in `initContainers` and in that order, so that the app's
//!   own init containers already run with the redirect rules and the proxy;
//! - the `l7inspect-init-run` volume;
//! - the Prometheus annotations, unless the pod template already has one of
//!   them (the app's own scrape configuration wins; the summary says so);
//! - `terminationGracePeriodSeconds` when the pod has none or a smaller one
//!   (30 s, Kubernetes' default: the app's own shutdown plus the sidecar's
//!   10 s drain; a longer one is kept).
//!
//! Documents that do not change (other kinds, workloads already injected,
//! opted out or skipped) are written back byte for byte, comments included.
//! A changed document is written back from its parsed value: its keys keep
//! their order, but its comments (other than those before its first line)
//! and its quoting style are lost.
//!
//! Skipped: workloads whose pod template or object carries the annotation
//! `l7inspect.io/inject: disabled`, and pods with `hostNetwork: true` (the
//! redirect rules would be installed in the node's network namespace).
//! Left as they are: workloads that already have a container or volume
//! named like one of ours.

use serde_norway::{Mapping, Value};
use std::fmt;

/// What l7inspect adds to a pod template (`deploy/kubernetes/inject/
/// l7inspect-pod-patch.yaml`): the one source of truth, which
/// `deploy/kubernetes/deployment.yaml` is checked against.
pub const POD_PATCH: &str =
    include_str!("../../../../deploy/kubernetes/inject/l7inspect-pod-patch.yaml");

/// The annotation that opts a workload out: `l7inspect.io/inject: disabled`
/// on the workload or its pod template.
pub const INJECT_ANNOTATION: &str = "l7inspect.io/inject";

/// The value of [`INJECT_ANNOTATION`] that opts out.
pub const INJECT_DISABLED: &str = "disabled";

/// The init container that installs the redirect rules.
pub const INIT_CONTAINER: &str = "l7inspect-init";

/// The native sidecar container.
pub const SIDECAR_CONTAINER: &str = "l7inspect-sidecar";

/// The init container's `/run` volume.
pub const INIT_VOLUME: &str = "l7inspect-init-run";

/// The OTLP endpoint in [`POD_PATCH`] (a test keeps the two equal).
pub const DEFAULT_OTLP_ENDPOINT: &str =
    "http://otel-collector.observability.svc.cluster.local:4317";

/// The OTLP protocol in [`POD_PATCH`] (a test keeps the two equal).
pub const DEFAULT_OTLP_PROTOCOL: &str = "grpc";

/// The label whose value becomes `OTEL_SERVICE_NAME` (downward API).
const NAME_LABEL: &str = "app.kubernetes.io/name";

/// What to add besides [`POD_PATCH`] as it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectOptions {
    /// The `l7inspect-init` image.
    pub init_image: String,
    /// The `l7inspect-sidecar` image.
    pub sidecar_image: String,
    /// The sidecar's `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub otlp_endpoint: String,
    /// The sidecar's `OTEL_EXPORTER_OTLP_PROTOCOL` (`grpc` or `http/protobuf`).
    pub otlp_protocol: String,
    /// The init container's `L7INSPECT_SKIP_INBOUND_PORTS` (e.g. `22,8000-8010`).
    pub skip_inbound_ports: Option<String>,
    /// The init container's `L7INSPECT_SKIP_OUTBOUND_PORTS` (e.g. `25,3306`).
    pub skip_outbound_ports: Option<String>,
}

impl Default for InjectOptions {
    /// The images of this build's version, the patch's collector endpoint and
    /// protocol, no ports skipped.
    fn default() -> Self {
        InjectOptions {
            init_image: default_init_image(),
            sidecar_image: default_sidecar_image(),
            otlp_endpoint: DEFAULT_OTLP_ENDPOINT.to_owned(),
            otlp_protocol: DEFAULT_OTLP_PROTOCOL.to_owned(),
            skip_inbound_ports: None,
            skip_outbound_ports: None,
        }
    }
}

/// `l7inspect/init:<this crate's version>`.
pub fn default_init_image() -> String {
    format!("l7inspect/init:{}", env!("CARGO_PKG_VERSION"))
}

/// `l7inspect/sidecar:<this crate's version>`.
pub fn default_sidecar_image() -> String {
    format!("l7inspect/sidecar:{}", env!("CARGO_PKG_VERSION"))
}

/// What happened to one workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `kind/name`, the kind in lower case: `deployment/web`.
    pub workload: String,
    /// What was done.
    pub outcome: Outcome,
}

/// What was done to a workload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// l7inspect was added; the notes say what was adapted or left out.
    Injected {
        /// Deviations from [`POD_PATCH`], one phrase each.
        notes: Vec<String>,
    },
    /// The pod already has an l7inspect container or volume: unchanged.
    AlreadyInjected,
    /// Not injected, for this reason: unchanged.
    Skipped(String),
}

impl fmt::Display for Report {
    /// One summary line: `deployment/web: injected`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: ", self.workload)?;
        match &self.outcome {
            Outcome::Injected { notes } if notes.is_empty() => f.write_str("injected"),
            Outcome::Injected { notes } => write!(f, "injected ({})", notes.join("; ")),
            Outcome::AlreadyInjected => f.write_str("already injected, left as is"),
            Outcome::Skipped(why) => write!(f, "skipped: {why}"),
        }
    }
}

/// The input is not YAML (or a document cannot be re-written).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InjectError {
    /// The parser's message on one line, with the line and column in the
    /// whole input when the parser gives them.
    pub message: String,
    /// 1-based line and column in the whole input, when known.
    pub location: Option<(usize, usize)>,
}

impl InjectError {
    fn from_yaml(e: &serde_norway::Error) -> Self {
        InjectError {
            message: one_line(&e.to_string()),
            location: e.location().map(|l| (l.line(), l.column())),
        }
    }
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Adds l7inspect to every workload of the YAML stream `input`.
///
/// Returns the whole output stream and one [`Report`] per workload found, in
/// input order. Unchanged documents are copied byte for byte. On an error
/// nothing is returned but the error: no partial output.
pub fn inject_documents(
    input: &str,
    opts: &InjectOptions,
) -> Result<(String, Vec<Report>), InjectError> {
    let patch = Patch::new(opts);
    let mut out = String::with_capacity(input.len() * 2);
    let mut reports = Vec::new();
    for (i, chunk) in split_documents(input).into_iter().enumerate() {
        // Pad with the lines before the chunk so that the parser's line
        // numbers are those of the whole input.
        let padded = format!("{}{}", "\n".repeat(chunk.first_line), chunk.text);
        let mut doc: Value =
            serde_norway::from_str(&padded).map_err(|e| InjectError::from_yaml(&e))?;
        doc.apply_merge().map_err(|e| InjectError::from_yaml(&e))?;
        if inject_value(&mut doc, &patch, &mut reports) {
            let yaml = serde_norway::to_string(&doc).map_err(|e| InjectError::from_yaml(&e))?;
            let prefix = chunk.prefix();
            if i > 0 && !prefix.has_marker {
                out.push_str("---\n");
            }
            out.push_str(&prefix.text);
            out.push_str(&yaml);
            if chunk.ends_with_end_marker() {
                out.push_str("...\n");
            }
        } else {
            out.push_str(chunk.text);
        }
    }
    Ok((out, reports))
}

/// One document's text in the input stream.
#[derive(Debug)]
struct Chunk<'a> {
    text: &'a str,
    /// 0-based line of `text`'s start in the whole input.
    first_line: usize,
}

/// The lines a changed document keeps from its text.
struct Prefix {
    text: String,
    has_marker: bool,
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

fn is_comment_or_blank(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

impl Chunk<'_> {
    /// The leading blank, comment and directive lines and a `---` line with
    /// nothing but a comment after it; a `---` with content is replaced by
    /// a plain `---`.
    fn prefix(&self) -> Prefix {
        let mut text = String::new();
        let mut has_marker = false;
        for line in self.text.split_inclusive('\n') {
            if is_comment_or_blank(line) || line.starts_with('%') {
                text.push_str(line);
            } else if !has_marker && is_marker(line, "---") {
                has_marker = true;
                if is_comment_or_blank(&line[3..]) {
                    text.push_str(line);
                    if !line.ends_with('\n') {
                        text.push('\n');
                    }
                } else {
                    text.push_str("---\n");
                }
            } else {
                break;
            }
        }
        Prefix { text, has_marker }
    }

    fn ends_with_end_marker(&self) -> bool {
        self.text
            .split_inclusive('\n')
            .next_back()
            .is_some_and(|l| is_marker(l, "..."))
    }
}

/// Splits a YAML stream into its documents' texts, at `---` lines (which
/// start a document, also inside what would otherwise be a block scalar) and
/// after `...` lines. Comments and directives before a `---` stay with the
/// document it starts.
fn split_documents(input: &str) -> Vec<Chunk<'_>> {
    let mut chunks = Vec::new();
    let (mut start, mut start_line) = (0, 0);
    // Whether the current chunk has a `---` or content yet.
    let mut started = false;
    let mut offset = 0;
    for (n, line) in input.split_inclusive('\n').enumerate() {
        // `%YAML`/`%TAG` lines before a document's `---`.
        let directive = line.starts_with('%') && !started;
        if is_marker(line, "---") {
            if started {
                chunks.push(Chunk {
                    text: &input[start..offset],
                    first_line: start_line,
                });
                (start, start_line) = (offset, n);
            }
            started = true;
        } else if !is_comment_or_blank(line) && !directive {
            started = true;
        }
        offset += line.len();
        if is_marker(line, "...") {
            chunks.push(Chunk {
                text: &input[start..offset],
                first_line: start_line,
            });
            (start, start_line, started) = (offset, n + 1, false);
        }
    }
    if start < input.len() {
        chunks.push(Chunk {
            text: &input[start..],
            first_line: start_line,
        });
    }
    chunks
}

/// [`POD_PATCH`] parsed, with the options applied.
struct Patch {
    annotations: Mapping,
    grace: Option<u64>,
    init_containers: Vec<Value>,
    volumes: Vec<Value>,
}

impl Patch {
    fn new(opts: &InjectOptions) -> Self {
        let patch: Value = serde_norway::from_str(POD_PATCH).expect("POD_PATCH is YAML");
        let annotations = patch["metadata"]["annotations"]
            .as_mapping()
            .cloned()
            .unwrap_or_default();
        let spec = &patch["spec"];
        let grace = spec["terminationGracePeriodSeconds"].as_u64();
        let mut init_containers = spec["initContainers"]
            .as_sequence()
            .cloned()
            .unwrap_or_default();
        for c in &mut init_containers {
            match c["name"].as_str() {
                Some(INIT_CONTAINER) => {
                    c["image"] = opts.init_image.clone().into();
                    for (var, value) in [
                        ("L7INSPECT_SKIP_INBOUND_PORTS", &opts.skip_inbound_ports),
                        ("L7INSPECT_SKIP_OUTBOUND_PORTS", &opts.skip_outbound_ports),
                    ] {
                        if let Some(v) = value {
                            set_env(c, var, env_value(var, v));
                        }
                    }
                }
                Some(SIDECAR_CONTAINER) => {
                    c["image"] = opts.sidecar_image.clone().into();
                    set_env(
                        c,
                        "OTEL_EXPORTER_OTLP_ENDPOINT",
                        env_value("OTEL_EXPORTER_OTLP_ENDPOINT", &opts.otlp_endpoint),
                    );
                    set_env(
                        c,
                        "OTEL_EXPORTER_OTLP_PROTOCOL",
                        env_value("OTEL_EXPORTER_OTLP_PROTOCOL", &opts.otlp_protocol),
                    );
                }
                _ => {}
            }
        }
        let volumes = spec["volumes"].as_sequence().cloned().unwrap_or_default();
        Patch {
            annotations,
            grace,
            init_containers,
            volumes,
        }
    }
}

/// `{name: var, value: value}`.
fn env_value(var: &str, value: &str) -> Value {
    let mut m = Mapping::new();
    m.insert("name".into(), var.into());
    m.insert("value".into(), value.into());
    Value::Mapping(m)
}

/// Replaces the container's env entry named like `entry`, or appends it.
fn set_env(container: &mut Value, var: &str, entry: Value) {
    let Some(c) = container.as_mapping_mut() else {
        return;
    };
    let env = c
        .entry("env".into())
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if !env.is_sequence() {
        *env = Value::Sequence(Vec::new());
    }
    let env = env.as_sequence_mut().expect("a sequence");
    match env.iter_mut().find(|e| e["name"].as_str() == Some(var)) {
        Some(e) => *e = entry,
        None => env.push(entry),
    }
}

/// Injects the workloads of one document; true when it changed.
fn inject_value(doc: &mut Value, patch: &Patch, reports: &mut Vec<Report>) -> bool {
    let Some(kind) = doc["kind"].as_str().map(str::to_owned) else {
        return false;
    };
    let template_path: &[&str] = match kind.as_str() {
        "List" => {
            let mut changed = false;
            if let Some(items) = doc.get_mut("items").and_then(Value::as_sequence_mut) {
                for item in items {
                    changed |= inject_value(item, patch, reports);
                }
            }
            return changed;
        }
        "Pod" => &[],
        "Deployment"
        | "StatefulSet"
        | "DaemonSet"
        | "ReplicaSet"
        | "ReplicationController"
        | "Job" => &["spec", "template"],
        "CronJob" => &["spec", "jobTemplate", "spec", "template"],
        _ => return false,
    };
    let meta = &doc["metadata"];
    let name = meta["name"]
        .as_str()
        .or_else(|| {
            meta["generateName"]
                .as_str()
                .map(|g| g.trim_end_matches('-'))
        })
        .unwrap_or("")
        .to_owned();
    let workload = Workload {
        id: format!("{}/{}", kind.to_lowercase(), name),
        service_name: meta["labels"][NAME_LABEL]
            .as_str()
            .filter(|s| !s.is_empty())
            .unwrap_or(&name)
            .to_owned(),
        opted_out: opted_out(meta),
    };
    let mut template = Some(doc);
    for key in template_path {
        template = template.and_then(|t| t.get_mut(*key));
    }
    let outcome = match template {
        Some(t) if t.is_mapping() => inject_template(t, &workload, patch),
        _ => Outcome::Skipped(format!("no pod template at {}", template_path.join("."))),
    };
    let changed = matches!(outcome, Outcome::Injected { .. });
    reports.push(Report {
        workload: workload.id,
        outcome,
    });
    changed
}

/// What the pod template needs to know of its workload.
struct Workload {
    id: String,
    /// The literal `OTEL_SERVICE_NAME` when the pod has no name label: the
    /// workload's `app.kubernetes.io/name` label, else its name.
    service_name: String,
    opted_out: bool,
}

fn opted_out(metadata: &Value) -> bool {
    metadata["annotations"][INJECT_ANNOTATION].as_str() == Some(INJECT_DISABLED)
}

/// Whether the pod already has one of the containers or the volume.
fn already_injected(spec: &Value) -> bool {
    let named = |list: &str, names: &[&str]| {
        spec[list].as_sequence().is_some_and(|items| {
            items
                .iter()
                .any(|i| i["name"].as_str().is_some_and(|n| names.contains(&n)))
        })
    };
    let ours = [INIT_CONTAINER, SIDECAR_CONTAINER];
    named("initContainers", &ours) || named("containers", &ours) || named("volumes", &[INIT_VOLUME])
}

/// The pod's own containers (app and init), in order.
fn pod_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"]
        .into_iter()
        .filter_map(|list| spec[list].as_sequence())
        .flatten()
}

/// A container port of the pod that the sidecar listens on too: the sidecar
/// could not bind it, and the pod would never start.
fn port_conflict(spec: &Value, sidecar: &Value) -> Option<String> {
    let ours: Vec<u64> = sidecar["ports"]
        .as_sequence()?
        .iter()
        .filter_map(|p| p["containerPort"].as_u64())
        .collect();
    pod_containers(spec).find_map(|c| {
        let port = c["ports"]
            .as_sequence()?
            .iter()
            .filter_map(|p| p["containerPort"].as_u64())
            .find(|p| ours.contains(p))?;
        Some(format!(
            "container {} uses port {port}, which the sidecar listens on",
            c["name"].as_str().unwrap_or("(unnamed)")
        ))
    })
}

/// The pod's containers that run as `uid` (their own `runAsUser`, else the
/// pod's): l7inspect-init exempts that UID, so their traffic bypasses the
/// proxy.
fn runs_as(spec: &Value, uid: u64) -> Vec<String> {
    let pod = spec["securityContext"]["runAsUser"].as_u64();
    pod_containers(spec)
        .filter(|c| c["securityContext"]["runAsUser"].as_u64().or(pod) == Some(uid))
        .map(|c| c["name"].as_str().unwrap_or("(unnamed)").to_owned())
        .collect()
}

/// Injects one pod template (a mapping): `metadata` and `spec`.
fn inject_template(template: &mut Value, workload: &Workload, patch: &Patch) -> Outcome {
    let spec = &template["spec"];
    if !spec.is_mapping() {
        return Outcome::Skipped("no pod spec".into());
    }
    if already_injected(spec) {
        return Outcome::AlreadyInjected;
    }
    if workload.opted_out || opted_out(&template["metadata"]) {
        return Outcome::Skipped(format!("{INJECT_ANNOTATION}: {INJECT_DISABLED}"));
    }
    if spec["hostNetwork"].as_bool() == Some(true) {
        return Outcome::Skipped("hostNetwork (the rules would apply to the node)".into());
    }
    let sidecar = patch
        .init_containers
        .iter()
        .find(|c| c["name"].as_str() == Some(SIDECAR_CONTAINER));
    if let Some(why) = sidecar.and_then(|ours| port_conflict(spec, ours)) {
        return Outcome::Skipped(why);
    }
    let proxy_uid = sidecar.and_then(|ours| ours["securityContext"]["runAsUser"].as_u64());
    let as_proxy = proxy_uid.map(|uid| runs_as(spec, uid)).unwrap_or_default();
    for list in ["initContainers", "volumes"] {
        if !matches!(
            spec.get(list),
            None | Some(Value::Null | Value::Sequence(_))
        ) {
            return Outcome::Skipped(format!("spec.{list} is not a list"));
        }
    }
    if !matches!(
        template.get("metadata"),
        None | Some(Value::Null | Value::Mapping(_))
    ) {
        return Outcome::Skipped("metadata is not a mapping".into());
    }
    let has_name_label = template["metadata"]["labels"][NAME_LABEL].is_string();
    let mut notes = Vec::new();
    if let (Some(uid), false) = (proxy_uid, as_proxy.is_empty()) {
        notes.push(format!(
            "warning: {} run{} as UID {uid}, the proxy's: {} traffic is not redirected",
            as_proxy.join(", "),
            if as_proxy.len() == 1 { "s" } else { "" },
            if as_proxy.len() == 1 { "its" } else { "their" },
        ));
    }

    // Annotations: all of the patch's, or none if the pod has one of them.
    let t = template.as_mapping_mut().expect("checked");
    let metadata = mapping_at(t, "metadata", Some("spec"));
    let annotations = mapping_at(metadata, "annotations", None);
    let existing: Vec<&str> = patch
        .annotations
        .keys()
        .filter(|k| annotations.contains_key(*k))
        .filter_map(Value::as_str)
        .collect();
    if existing.is_empty() {
        for (k, v) in &patch.annotations {
            annotations.insert(k.clone(), v.clone());
        }
    } else {
        notes.push(format!(
            "kept its own {} annotation{}: the sidecar's metrics on :4191 are not scraped",
            existing.join(", "),
            if existing.len() == 1 { "" } else { "s" }
        ));
    }

    let spec = t
        .get_mut("spec")
        .and_then(Value::as_mapping_mut)
        .expect("checked");
    if let Some(need) = patch.grace {
        match spec.get("terminationGracePeriodSeconds") {
            None | Some(Value::Null) => {
                insert_before(
                    spec,
                    "terminationGracePeriodSeconds",
                    need.into(),
                    &["initContainers", "containers"],
                );
            }
            Some(v) => {
                if let Some(have) = v.as_u64().filter(|have| *have < need) {
                    spec.insert("terminationGracePeriodSeconds".into(), need.into());
                    notes.push(format!(
                        "terminationGracePeriodSeconds raised from {have} to {need}"
                    ));
                }
            }
        }
    }

    let mut ours = patch.init_containers.clone();
    if !has_name_label {
        for c in &mut ours {
            if c["name"].as_str() == Some(SIDECAR_CONTAINER)
                && c["env"].as_sequence().is_some_and(|env| {
                    env.iter()
                        .any(|e| e["name"].as_str() == Some("OTEL_SERVICE_NAME"))
                })
            {
                set_env(
                    c,
                    "OTEL_SERVICE_NAME",
                    env_value("OTEL_SERVICE_NAME", &workload.service_name),
                );
            }
        }
    }
    match spec.get_mut("initContainers") {
        Some(Value::Sequence(init)) => {
            init.splice(0..0, ours);
        }
        _ => insert_before(
            spec,
            "initContainers",
            Value::Sequence(ours),
            &["containers"],
        ),
    }
    match spec.get_mut("volumes") {
        Some(Value::Sequence(volumes)) => volumes.extend(patch.volumes.iter().cloned()),
        _ => {
            spec.insert("volumes".into(), Value::Sequence(patch.volumes.clone()));
        }
    }
    Outcome::Injected { notes }
}

/// The mapping at `map[key]`, created (before the key `before`, if given)
/// when absent or null.
fn mapping_at<'a>(map: &'a mut Mapping, key: &str, before: Option<&str>) -> &'a mut Mapping {
    if !map.get(key).is_some_and(Value::is_mapping) {
        let empty = Value::Mapping(Mapping::new());
        match before {
            Some(b) => insert_before(map, key, empty, &[b]),
            None => {
                map.insert(key.into(), empty);
            }
        }
    }
    map.get_mut(key)
        .and_then(Value::as_mapping_mut)
        .expect("just made a mapping")
}

/// Inserts or replaces `key`; a new key goes before the first of `before`
/// present in the mapping, else at the end.
fn insert_before(map: &mut Mapping, key: &str, value: Value, before: &[&str]) {
    if map.contains_key(key) {
        map.insert(key.into(), value);
        return;
    }
    let Some(at) = before.iter().find(|b| map.contains_key(**b)) else {
        map.insert(key.into(), value);
        return;
    };
    let old = std::mem::take(map);
    let mut value = Some(value);
    for (k, v) in old {
        if k.as_str() == Some(at)
            && let Some(value) = value.take()
        {
            map.insert(key.into(), value);
        }
        map.insert(k, v);
    }
}

// === the command ===

use super::InjectArgs;
use std::{
    io::{Read, Write},
    process::ExitCode,
};

/// Runs `inject`: reads the manifests, writes them injected to stdout and
/// the summary to stderr; returns the exit code.
pub(super) fn run(args: InjectArgs) -> ExitCode {
    let (name, read) = match args.file.as_deref() {
        None => ("<stdin>".to_owned(), read_stdin()),
        Some(p) if p.as_os_str() == "-" => ("<stdin>".to_owned(), read_stdin()),
        Some(p) => (p.display().to_string(), std::fs::read(p)),
    };
    let input = match read {
        Ok(bytes) => bytes,
        Err(e) => {
            eprintln!("error: {name}: cannot read: {e}");
            return ExitCode::from(2);
        }
    };
    let input = match String::from_utf8(input) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {name}: not UTF-8: {e}");
            return ExitCode::from(2);
        }
    };
    let opts = InjectOptions {
        init_image: args.init_image,
        sidecar_image: args.sidecar_image,
        otlp_endpoint: args.otlp_endpoint,
        otlp_protocol: args.otlp_protocol,
        skip_inbound_ports: args.skip_inbound_ports,
        skip_outbound_ports: args.skip_outbound_ports,
    };
    let (output, reports) = match inject_documents(&input, &opts) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {name}: {e}");
            return ExitCode::from(2);
        }
    };
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = stdout
        .write_all(output.as_bytes())
        .and_then(|()| stdout.flush())
    {
        eprintln!("error: cannot write to stdout: {e}");
        return ExitCode::FAILURE;
    }
    for report in &reports {
        eprintln!("{report}");
    }
    ExitCode::SUCCESS
}

fn read_stdin() -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    std::io::stdin().read_to_end(&mut buf)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT_YAML: &str = include_str!("../../../../deploy/kubernetes/deployment.yaml");
    const APP_YAML: &str = include_str!("../../../../deploy/kubernetes/testdata/app.yaml");

    /// The images deployment.yaml shows (`VERSION` placeholders).
    fn placeholder_opts() -> InjectOptions {
        InjectOptions {
            init_image: "l7inspect/init:VERSION".into(),
            sidecar_image: "l7inspect/sidecar:VERSION".into(),
            ..InjectOptions::default()
        }
    }

    fn inject(input: &str) -> (String, Vec<Report>) {
        inject_documents(input, &InjectOptions::default()).unwrap()
    }

    fn docs(yaml: &str) -> Vec<Value> {
        split_documents(yaml)
            .iter()
            .map(|c| serde_norway::from_str::<Value>(c.text).unwrap())
            .filter(|v| !v.is_null())
            .collect()
    }

    fn lines(reports: &[Report]) -> Vec<String> {
        reports.iter().map(ToString::to_string).collect()
    }

    fn names(list: &Value) -> Vec<&str> {
        list.as_sequence()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap())
            .collect()
    }

    fn env<'a>(container: &'a Value, var: &str) -> &'a Value {
        container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|e| e["name"].as_str() == Some(var))
            .unwrap_or_else(|| panic!("no {var} in {container:?}"))
    }

    const POD: &str = "\
apiVersion: v1
kind: Pod
metadata:
  name: x
spec:
  containers:
    - name: app
      image: app:1
";

    fn workload(kind: &str, api: &str, name: &str) -> String {
        format!(
            "apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\nspec:\n  template:\n    \
             metadata:\n      labels:\n        app.kubernetes.io/name: {name}-app\n    spec:\n      \
             containers:\n        - name: app\n          image: app:1\n"
        )
    }

    /// The pod spec of every workload the output holds, in order.
    fn pod_specs(yaml: &str) -> Vec<Value> {
        let mut specs = Vec::new();
        for doc in docs(yaml) {
            let template = match doc["kind"].as_str().unwrap() {
                "Pod" => doc.clone(),
                "CronJob" => doc["spec"]["jobTemplate"]["spec"]["template"].clone(),
                "List" => {
                    for item in doc["items"].as_sequence().unwrap() {
                        specs.push(item["spec"]["template"]["spec"].clone());
                    }
                    continue;
                }
                "Service" | "ConfigMap" => continue,
                _ => doc["spec"]["template"].clone(),
            };
            specs.push(template["spec"].clone());
        }
        specs
    }

    #[test]
    fn injecting_the_demo_app_gives_deployment_yaml() {
        let (out, reports) = inject_documents(APP_YAML, &placeholder_opts()).unwrap();
        assert_eq!(lines(&reports), ["deployment/l7inspect-demo: injected"]);
        assert_eq!(docs(&out), docs(DEPLOYMENT_YAML));
    }

    #[test]
    fn deployment_yaml_counts_as_injected() {
        let (out, reports) = inject(DEPLOYMENT_YAML);
        assert_eq!(out, DEPLOYMENT_YAML);
        assert_eq!(
            lines(&reports),
            ["deployment/l7inspect-demo: already injected, left as is"]
        );
    }

    #[test]
    fn the_defaults_are_the_patchs() {
        let patch: Value = serde_norway::from_str(POD_PATCH).unwrap();
        let sidecar = &patch["spec"]["initContainers"][1];
        assert_eq!(sidecar["name"].as_str(), Some(SIDECAR_CONTAINER));
        assert_eq!(
            env(sidecar, "OTEL_EXPORTER_OTLP_ENDPOINT")["value"].as_str(),
            Some(DEFAULT_OTLP_ENDPOINT)
        );
        assert_eq!(
            env(sidecar, "OTEL_EXPORTER_OTLP_PROTOCOL")["value"].as_str(),
            Some(DEFAULT_OTLP_PROTOCOL)
        );
        assert_eq!(
            names(&patch["spec"]["initContainers"]),
            [INIT_CONTAINER, SIDECAR_CONTAINER]
        );
        assert_eq!(names(&patch["spec"]["volumes"]), [INIT_VOLUME]);
    }

    #[test]
    fn every_workload_kind_gets_the_containers_images_and_volume() {
        let input = [
            workload("Deployment", "apps/v1", "web"),
            workload("StatefulSet", "apps/v1", "db"),
            workload("DaemonSet", "apps/v1", "agent"),
            workload("ReplicaSet", "apps/v1", "rs"),
            workload("ReplicationController", "v1", "rc"),
            workload("Job", "batch/v1", "once"),
            "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: nightly\nspec:\n  \
             schedule: '@daily'\n  jobTemplate:\n    spec:\n      template:\n        spec:\n          \
             containers:\n            - name: app\n              image: app:1\n"
                .to_owned(),
            POD.to_owned(),
        ]
        .join("---\n");
        let opts = InjectOptions {
            init_image: "reg/init:1".into(),
            sidecar_image: "reg/sidecar:1".into(),
            ..InjectOptions::default()
        };
        let (out, reports) = inject_documents(&input, &opts).unwrap();
        assert_eq!(
            lines(&reports),
            [
                "deployment/web: injected",
                "statefulset/db: injected",
                "daemonset/agent: injected",
                "replicaset/rs: injected",
                "replicationcontroller/rc: injected",
                "job/once: injected",
                "cronjob/nightly: injected",
                "pod/x: injected",
            ]
        );
        let specs = pod_specs(&out);
        assert_eq!(specs.len(), 8);
        for spec in &specs {
            let init = &spec["initContainers"];
            assert_eq!(names(init), [INIT_CONTAINER, SIDECAR_CONTAINER]);
            assert_eq!(init[0]["image"].as_str(), Some("reg/init:1"));
            assert_eq!(init[1]["image"].as_str(), Some("reg/sidecar:1"));
            assert_eq!(init[1]["restartPolicy"].as_str(), Some("Always"));
            assert_eq!(names(&spec["volumes"]), [INIT_VOLUME]);
            assert_eq!(names(&spec["containers"]), ["app"]);
            assert_eq!(spec["terminationGracePeriodSeconds"].as_u64(), Some(30));
        }
        // The templates' name label is read through the downward API...
        let web = &specs[0]["initContainers"][1];
        assert_eq!(
            env(web, "OTEL_SERVICE_NAME")["valueFrom"]["fieldRef"]["fieldPath"].as_str(),
            Some("metadata.labels['app.kubernetes.io/name']")
        );
        // ...and without one the service is named after the workload.
        for (spec, name) in [(&specs[6], "nightly"), (&specs[7], "x")] {
            let var = env(&spec["initContainers"][1], "OTEL_SERVICE_NAME");
            assert_eq!(var["value"].as_str(), Some(name));
            assert!(var.get("valueFrom").is_none());
        }
        // The pod annotations.
        let pod = docs(&out).pop().unwrap();
        assert_eq!(
            pod["metadata"]["annotations"]["prometheus.io/port"].as_str(),
            Some("4191")
        );
    }

    #[test]
    fn the_workloads_name_label_names_the_service_when_the_pod_has_none() {
        let input = "kind: Deployment\nmetadata:\n  name: web\n  labels:\n    \
                     app.kubernetes.io/name: shop\nspec:\n  template:\n    spec:\n      \
                     containers: [{name: app, image: app}]\n";
        let (out, _) = inject(input);
        let spec = &pod_specs(&out)[0];
        let var = env(&spec["initContainers"][1], "OTEL_SERVICE_NAME");
        assert_eq!(var["value"].as_str(), Some("shop"));
        // The template had no metadata: it gets one, before its spec.
        let doc = &docs(&out)[0];
        let keys: Vec<_> = doc["spec"]["template"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(keys, ["metadata", "spec"]);
    }

    #[test]
    fn options_become_env_vars() {
        let opts = InjectOptions {
            otlp_endpoint: "http://collector:4318".into(),
            otlp_protocol: "http/protobuf".into(),
            skip_inbound_ports: Some("22,8000-8010".into()),
            skip_outbound_ports: Some("3306".into()),
            ..InjectOptions::default()
        };
        let (out, _) = inject_documents(POD, &opts).unwrap();
        let init = &pod_specs(&out)[0]["initContainers"];
        assert_eq!(
            env(&init[0], "L7INSPECT_SKIP_INBOUND_PORTS")["value"].as_str(),
            Some("22,8000-8010")
        );
        assert_eq!(
            env(&init[0], "L7INSPECT_SKIP_OUTBOUND_PORTS")["value"].as_str(),
            Some("3306")
        );
        assert_eq!(
            env(&init[1], "OTEL_EXPORTER_OTLP_ENDPOINT")["value"].as_str(),
            Some("http://collector:4318")
        );
        assert_eq!(
            env(&init[1], "OTEL_EXPORTER_OTLP_PROTOCOL")["value"].as_str(),
            Some("http/protobuf")
        );
        // Without them, the init container has no env at all.
        let (out, _) = inject(POD);
        assert!(pod_specs(&out)[0]["initContainers"][0].get("env").is_none());
    }

    #[test]
    fn other_documents_pass_through_byte_for_byte() {
        let service = "# the service\napiVersion: v1\nkind: Service\nmetadata:\n  name: web  \
                       # trailing comment\nspec:\n  ports: [{port: 80}]\n";
        let config = "---\n# a config\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\n\
                      data:\n  x: \"1\"\n";
        let input = format!("{service}---\n{POD}{config}");
        let (out, reports) = inject(&input);
        assert_eq!(lines(&reports), ["pod/x: injected"]);
        assert!(out.starts_with(service), "{out}");
        assert!(out.ends_with(config), "{out}");
        let parsed = docs(&out);
        assert_eq!(parsed.len(), 3);
        assert_eq!(parsed[0]["kind"].as_str(), Some("Service"));
        assert_eq!(parsed[1]["kind"].as_str(), Some("Pod"));
        assert_eq!(parsed[2]["kind"].as_str(), Some("ConfigMap"));
        // The documents are still separated.
        assert!(out.contains("\n---\napiVersion: v1\nkind: Pod\n"), "{out}");
    }

    #[test]
    fn a_changed_document_keeps_its_leading_comments_and_key_order() {
        let input = format!("---  # first\n# about x\n{POD}");
        let (out, _) = inject(&input);
        assert!(out.starts_with("---  # first\n# about x\napiVersion: v1\nkind: Pod\n"));
        let doc = &docs(&out)[0];
        let keys: Vec<_> = doc["spec"]
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "terminationGracePeriodSeconds",
                "initContainers",
                "containers",
                "volumes"
            ]
        );
    }

    #[test]
    fn already_injected_documents_are_left_byte_for_byte() {
        let (once, _) = inject(&format!(
            "{POD}---\n{}",
            workload("Deployment", "apps/v1", "w")
        ));
        // Re-formatted by hand (flow style, a comment): still not touched.
        let edited = once.replace("  name: x\n", "  name: x # mine\n");
        let (twice, reports) = inject(&edited);
        assert_eq!(twice, edited);
        assert_eq!(
            lines(&reports),
            [
                "pod/x: already injected, left as is",
                "deployment/w: already injected, left as is"
            ]
        );
        // A pod with only one of our names counts too.
        let partial = POD.replace("name: app\n", "name: l7inspect-sidecar\n");
        let (out, reports) = inject(&partial);
        assert_eq!(out, partial);
        assert_eq!(lines(&reports), ["pod/x: already injected, left as is"]);
    }

    #[test]
    fn injecting_twice_is_injecting_once() {
        let input = format!(
            "{}---\n{POD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: s}}\n---\n{}",
            workload("Deployment", "apps/v1", "web"),
            APP_YAML
        );
        let (once, _) = inject(&input);
        let (twice, reports) = inject(&once);
        assert_eq!(twice, once);
        assert!(
            reports
                .iter()
                .all(|r| r.outcome == Outcome::AlreadyInjected),
            "{reports:?}"
        );
    }

    #[test]
    fn opt_out_on_the_workload_or_the_template_skips() {
        let on_workload = "kind: Deployment\nmetadata:\n  name: a\n  annotations:\n    \
                           l7inspect.io/inject: disabled\nspec:\n  template:\n    spec:\n      \
                           containers: [{name: app, image: app}]\n";
        let on_template = "kind: StatefulSet\nmetadata:\n  name: b\nspec:\n  template:\n    \
                           metadata:\n      annotations: {l7inspect.io/inject: disabled}\n    \
                           spec:\n      containers: [{name: app, image: app}]\n";
        let input = format!("{on_workload}---\n{on_template}");
        let (out, reports) = inject(&input);
        assert_eq!(out, input);
        assert_eq!(
            lines(&reports),
            [
                "deployment/a: skipped: l7inspect.io/inject: disabled",
                "statefulset/b: skipped: l7inspect.io/inject: disabled"
            ]
        );
        // Another value does not opt out.
        let (_, reports) = inject(&on_workload.replace("disabled", "enabled"));
        assert_eq!(lines(&reports), ["deployment/a: injected"]);
    }

    #[test]
    fn a_pod_using_the_sidecars_ports_is_skipped() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
                     spec:\n  containers:\n  - {name: a, image: a, ports: [{containerPort: 8080}]}\n  \
                     - {name: metrics, image: m, ports: [{containerPort: 4191}]}\n";
        let (out, reports) = inject(input);
        assert_eq!(out, input);
        assert_eq!(
            lines(&reports),
            ["pod/p: skipped: container metrics uses port 4191, which the sidecar listens on"]
        );
    }

    #[test]
    fn containers_running_as_the_proxy_uid_are_named() {
        let input = "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n\
                     spec:\n  securityContext: {runAsUser: 2102}\n  containers:\n  \
                     - {name: a, image: a}\n  \
                     - {name: b, image: b, securityContext: {runAsUser: 1000}}\n";
        let (_, reports) = inject(input);
        assert_eq!(
            lines(&reports),
            [
                "pod/p: injected (warning: a runs as UID 2102, the proxy's: its traffic is not redirected)"
            ]
        );
    }

    #[test]
    fn host_network_pods_are_skipped() {
        let input = "kind: DaemonSet\nmetadata: {name: node-agent}\nspec:\n  template:\n    \
                     spec:\n      hostNetwork: true\n      containers: [{name: a, image: a}]\n";
        let (out, reports) = inject(input);
        assert_eq!(out, input);
        assert_eq!(
            lines(&reports),
            ["daemonset/node-agent: skipped: hostNetwork (the rules would apply to the node)"]
        );
        let (_, reports) = inject(&input.replace("true", "false"));
        assert_eq!(lines(&reports), ["daemonset/node-agent: injected"]);
    }

    #[test]
    fn ours_come_before_the_apps_init_containers_and_its_volumes_stay() {
        let input = "\
kind: Deployment
metadata: {name: web}
spec:
  template:
    metadata:
      annotations: {team: shop}
    spec:
      initContainers:
        - {name: migrate, image: m}
        - {name: warm, image: w}
      containers: [{name: app, image: app}]
      volumes:
        - {name: data, emptyDir: {}}
";
        let (out, _) = inject(input);
        let spec = &pod_specs(&out)[0];
        assert_eq!(
            names(&spec["initContainers"]),
            [INIT_CONTAINER, SIDECAR_CONTAINER, "migrate", "warm"]
        );
        assert_eq!(names(&spec["volumes"]), ["data", INIT_VOLUME]);
        let annotations = &docs(&out)[0]["spec"]["template"]["metadata"]["annotations"];
        let keys: Vec<_> = annotations
            .as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap())
            .collect();
        assert_eq!(
            keys,
            [
                "team",
                "prometheus.io/scrape",
                "prometheus.io/port",
                "prometheus.io/path"
            ]
        );
    }

    #[test]
    fn the_apps_own_prometheus_annotations_win() {
        let input = "kind: Pod\nmetadata:\n  name: p\n  annotations:\n    \
                     prometheus.io/port: \"8080\"\nspec:\n  containers: [{name: a, image: a}]\n";
        let (out, reports) = inject(input);
        assert_eq!(
            lines(&reports),
            [
                "pod/p: injected (kept its own prometheus.io/port annotation: the sidecar's \
                 metrics on :4191 are not scraped)"
            ]
        );
        let annotations = &docs(&out)[0]["metadata"]["annotations"];
        assert_eq!(annotations.as_mapping().unwrap().len(), 1);
        assert_eq!(annotations["prometheus.io/port"].as_str(), Some("8080"));
    }

    #[test]
    fn a_short_grace_period_is_raised_a_long_one_kept() {
        let pod = |grace: u32| {
            POD.replace(
                "spec:\n",
                &format!("spec:\n  terminationGracePeriodSeconds: {grace}\n"),
            )
        };
        let (out, reports) = inject(&pod(5));
        assert_eq!(
            lines(&reports),
            ["pod/x: injected (terminationGracePeriodSeconds raised from 5 to 30)"]
        );
        assert_eq!(
            pod_specs(&out)[0]["terminationGracePeriodSeconds"].as_u64(),
            Some(30)
        );
        let (out, reports) = inject(&pod(120));
        assert_eq!(lines(&reports), ["pod/x: injected"]);
        assert_eq!(
            pod_specs(&out)[0]["terminationGracePeriodSeconds"].as_u64(),
            Some(120)
        );
    }

    #[test]
    fn list_items_are_injected() {
        let input = "\
apiVersion: v1
kind: List
items:
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: a}
    spec:
      template:
        spec:
          containers: [{name: app, image: app}]
  - apiVersion: v1
    kind: Service
    metadata: {name: a}
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: b, annotations: {l7inspect.io/inject: disabled}}
    spec:
      template:
        spec:
          containers: [{name: app, image: app}]
";
        let (out, reports) = inject(input);
        assert_eq!(
            lines(&reports),
            [
                "deployment/a: injected",
                "deployment/b: skipped: l7inspect.io/inject: disabled"
            ]
        );
        let list = &docs(&out)[0];
        let items = list["items"].as_sequence().unwrap();
        assert_eq!(
            names(&items[0]["spec"]["template"]["spec"]["initContainers"]),
            [INIT_CONTAINER, SIDECAR_CONTAINER]
        );
        assert_eq!(items[1]["kind"].as_str(), Some("Service"));
        assert!(
            items[2]["spec"]["template"]["spec"]
                .get("initContainers")
                .is_none()
        );
    }

    #[test]
    fn json_input_is_injected() {
        let input = r#"{"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "j"},
            "spec": {"containers": [{"name": "app", "image": "app"}]}}"#;
        let (out, reports) = inject(input);
        assert_eq!(lines(&reports), ["pod/j: injected"]);
        assert_eq!(
            names(&pod_specs(&out)[0]["initContainers"]),
            [INIT_CONTAINER, SIDECAR_CONTAINER]
        );
    }

    #[test]
    fn empty_and_comment_only_input_passes_through() {
        for input in ["", "# nothing\n", "---\n", "---\n---\n# c\n...\n"] {
            assert_eq!(inject(input), (input.to_owned(), vec![]), "{input:?}");
        }
    }

    #[test]
    fn end_markers_keep_documents_apart() {
        let input = format!("{POD}...\n{}", workload("Job", "batch/v1", "j"));
        let (out, reports) = inject(&input);
        assert_eq!(lines(&reports), ["pod/x: injected", "job/j: injected"]);
        assert_eq!(docs(&out).len(), 2);
        let (twice, _) = inject(&out);
        assert_eq!(twice, out);
    }

    #[test]
    fn a_pod_template_that_is_not_one_is_skipped_not_broken() {
        let input = "kind: Deployment\nmetadata: {name: d}\nspec:\n  template: 3\n---\n\
                     kind: Pod\nmetadata: {name: p}\nspec:\n  initContainers: x\n  containers: []\n";
        let (out, reports) = inject(input);
        assert_eq!(out, input);
        assert_eq!(
            lines(&reports),
            [
                "deployment/d: skipped: no pod template at spec.template",
                "pod/p: skipped: spec.initContainers is not a list"
            ]
        );
    }

    #[test]
    fn bad_yaml_is_an_error_with_the_line_of_the_whole_input() {
        let input = format!("{POD}---\nkind: Pod\nmetadata:\n  name: [unclosed\n");
        let err = inject_documents(&input, &InjectOptions::default()).unwrap_err();
        let (line, _) = err.location.expect("a location");
        // The error is in the second document, past line 10 of the input.
        assert!(line >= 11, "{err}");
        assert!(err.message.contains(&format!("line {line}")), "{err}");
        assert!(!err.message.contains('\n'));

        let err = inject_documents("a: b\n  c: d\n", &InjectOptions::default()).unwrap_err();
        assert_eq!(err.location.map(|l| l.0), Some(2), "{err}");
    }
}
