//! Semantic validation of the two resources: everything the OpenAPI schema cannot express.
//! Every error names the field it is about (`spec.steps[2].match: unknown field /request/pth`),
//! and all errors are returned at once, so one round of fixes is enough. The operator turns
//! them into status conditions; the worker refuses to start on them with the same text.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;

use cel_parser::ast::{EntryExpr, Expr, IdedExpr};

use crate::duration::Duration;
use crate::join_pipeline::{FilterOperator, JoinPipelineSpec, Part, SourceSpec};
use crate::pointer::JsonPointer;
use crate::process_definition::ProcessDefinitionSpec;

/// Top-level names a joined action has, besides the three parts.
pub const TRACKING_NUMBER_FIELD: &str = "trackingNumber";
/// Every part of a joined action carries its event time under this name.
pub const EVENT_TIME_FIELD: &str = "eventTime";

/// librdkafka properties Weft sets itself; a user value would break delivery guarantees.
const MANAGED_KAFKA_PROPERTIES: [&str; 5] = [
    "bootstrap.servers",
    "group.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "isolation.level",
];

/// One problem, with the path of the field it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidationError {
    /// The object the path is in, when it is not the one being validated, e.g.
    /// `ProcessDefinition/credit-card` while validating a pipeline with its processes.
    pub object: Option<String>,
    /// The field, as `kubectl explain` names it: `spec.steps[2].match`.
    pub path: String,
    pub message: String,
}

impl fmt::Display for ValidationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(object) = &self.object {
            write!(f, "{object} ")?;
        }
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// All problems found, in the order of the fields.
#[derive(Clone, Debug, Default, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<ValidationError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(ValidationError {
            object: None,
            path: path.into(),
            message: message.into(),
        });
    }

    fn into_result(self) -> Result<(), ValidationErrors> {
        if self.0.is_empty() { Ok(()) } else { Err(self) }
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &ValidationError> {
        self.0.iter()
    }
}

/// A field of the joined action that a ProcessDefinition reads, and where it reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldReference {
    /// Path of the ProcessDefinition field that holds the reference, e.g. `spec.steps[2].match`.
    pub at: String,
    /// The referenced field as a pointer into the joined action, e.g. `/request/path`.
    pub field: JsonPointer,
}

impl ProcessDefinitionSpec {
    /// Checks the definition on its own: unique names, predicates that parse and use only the
    /// action's variables, pointers into the action, timeouts.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        self.check().0.into_result()
    }

    /// Every field of the joined action the definition reads, with where it reads it.
    /// Predicates that do not parse contribute nothing (`validate` reports them).
    pub fn field_references(&self) -> Vec<FieldReference> {
        self.check().1
    }

    /// One pass over the definition: its own errors, and the well-formed field references
    /// (parsing each predicate once).
    fn check(&self) -> (ValidationErrors, Vec<FieldReference>) {
        let mut errors = ValidationErrors::default();
        let mut refs = Vec::new();
        let mut predicate =
            |errors: &mut ValidationErrors, at: String, source: &str| match predicate_references(
                source,
            ) {
                Ok(fields) => refs.extend(fields.into_iter().map(|field| FieldReference {
                    at: at.clone(),
                    field,
                })),
                Err(message) => errors.push(at, message),
            };
        check_unique_names(
            &mut errors,
            "spec.steps",
            "step",
            self.steps.iter().map(|s| s.name.as_str()),
        );
        for (i, step) in self.steps.iter().enumerate() {
            predicate(&mut errors, format!("spec.steps[{i}].match"), &step.match_);
            if let Some(sla) = step.sla {
                if sla.is_zero() {
                    errors.push(format!("spec.steps[{i}].sla"), "must be greater than 0s");
                } else if sla > self.instance_timeout {
                    errors.push(
                        format!("spec.steps[{i}].sla"),
                        format!(
                            "SLA {sla} is longer than instanceTimeout {}: the instance is abandoned before it can breach",
                            self.instance_timeout
                        ),
                    );
                }
            }
        }
        check_unique_names(
            &mut errors,
            "spec.outcomes",
            "outcome",
            self.outcomes.iter().map(|o| o.name.as_str()),
        );
        for (i, outcome) in self.outcomes.iter().enumerate() {
            predicate(
                &mut errors,
                format!("spec.outcomes[{i}].match"),
                &outcome.match_,
            );
        }
        let pointers = self
            .instance_key
            .fields
            .iter()
            .enumerate()
            .map(|(i, f)| (format!("spec.instanceKey.fields[{i}]"), f))
            .chain(
                self.dimensions
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("spec.dimensions[{i}].field"), &d.field)),
            );
        for (at, field) in pointers {
            match check_action_root(field) {
                Ok(()) => refs.push(FieldReference {
                    at,
                    field: field.clone(),
                }),
                Err(message) => errors.push(at, message),
            }
        }
        check_unique_names(
            &mut errors,
            "spec.dimensions",
            "dimension",
            self.dimensions.iter().map(|d| d.name.as_str()),
        );
        if self.instance_timeout.is_zero() {
            errors.push("spec.instanceTimeout", "must be greater than 0s");
        }
        if self.metrics_window < Duration::from_secs(1) {
            errors.push("spec.metricsWindow", "must be at least 1s");
        }
        (errors, refs)
    }
}

/// What a pipeline's joined actions contain, part by part.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ActionFields {
    /// Projected field names per part (`eventTime` included). A part missing here has no source.
    pub parts: BTreeMap<Part, BTreeSet<String>>,
    /// Parts whose whole payload is kept, so any field name may be present.
    pub whole_payload: BTreeSet<Part>,
}

impl ActionFields {
    /// Whether a pointer into the joined action names something the pipeline provides.
    /// Only the first level below a part is checked: a projected field may hold an object.
    fn check(&self, field: &JsonPointer) -> Result<(), String> {
        let segments = field.segments();
        let root = segments.first().map(String::as_str).unwrap_or_default();
        if root == TRACKING_NUMBER_FIELD {
            return if segments.len() == 1 {
                Ok(())
            } else {
                Err(format!("unknown field {field}"))
            };
        }
        let Some(part) = Part::from_name(root) else {
            return Err(format!("unknown field {field}"));
        };
        let Some(names) = self.parts.get(&part) else {
            return Err(format!(
                "unknown field {field}: the pipeline has no source for part {part}"
            ));
        };
        match segments.get(1) {
            None => Ok(()),
            Some(_) if self.whole_payload.contains(&part) => Ok(()),
            Some(name) if names.contains(name) => Ok(()),
            Some(_) => Err(format!("unknown field {field}")),
        }
    }
}

impl JoinPipelineSpec {
    /// Checks the pipeline on its own: sources, parts, join windows, scaling bounds, outputs.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::default();
        self.validate_kafka(&mut errors);
        self.validate_sources(&mut errors);
        self.validate_join(&mut errors);
        self.validate_scaling(&mut errors);
        self.validate_outputs(&mut errors);
        check_unique_names(
            &mut errors,
            "spec.processes.names",
            "process",
            self.processes.names.iter().map(String::as_str),
        );
        if self.checkpoint_interval < Duration::from_millis(100) {
            errors.push("spec.checkpointInterval", "must be at least 100ms");
        }
        errors.into_result()
    }

    /// Checks the pipeline together with the ProcessDefinitions it uses (by name): each on its
    /// own, then every field a definition reads against what the pipeline's sources provide.
    /// Errors about a definition carry `ProcessDefinition/<name>` and the path inside it.
    pub fn validate_with_processes(
        &self,
        processes: &[(&str, &ProcessDefinitionSpec)],
    ) -> Result<(), ValidationErrors> {
        let mut errors = self.validate().err().unwrap_or_default();
        let fields = self.action_fields();
        for (name, process) in processes {
            let object = format!("ProcessDefinition/{name}");
            let (mut process_errors, references) = process.check();
            for reference in references {
                if let Err(message) = fields.check(&reference.field) {
                    process_errors.push(reference.at, message);
                }
            }
            if self.outputs.alerts.is_none()
                && let Some(i) = process.steps.iter().position(|s| s.sla.is_some())
            {
                errors.push(
                    "spec.outputs.alerts",
                    format!(
                        "required: {object} has an SLA on step {:?}",
                        process.steps[i].name
                    ),
                );
            }
            errors
                .0
                .extend(process_errors.0.into_iter().map(|e| ValidationError {
                    object: Some(object.clone()),
                    ..e
                }));
        }
        errors.into_result()
    }

    /// The fields joined actions of this pipeline carry, part by part.
    pub fn action_fields(&self) -> ActionFields {
        let mut fields = ActionFields::default();
        for source in &self.sources {
            for part in source.parts() {
                let names = fields.parts.entry(part).or_default();
                names.insert(EVENT_TIME_FIELD.to_string());
                for field in &source.fields {
                    if field.parts.is_empty() || field.parts.contains(&part) {
                        names.insert(field.name.clone());
                    }
                }
                if source.keep_payload {
                    fields.whole_payload.insert(part);
                }
            }
        }
        fields
    }

    fn validate_kafka(&self, errors: &mut ValidationErrors) {
        for key in self.kafka.properties.keys() {
            if MANAGED_KAFKA_PROPERTIES.contains(&key.as_str()) {
                errors.push(
                    format!("spec.kafka.properties.{key}"),
                    "is managed by Weft and may not be set",
                );
            }
        }
        if self
            .kafka
            .bootstrap_servers
            .split(',')
            .any(|s| s.trim().is_empty())
        {
            errors.push(
                "spec.kafka.bootstrapServers",
                "must be a comma-separated list of host:port without empty entries",
            );
        }
    }

    fn validate_sources(&self, errors: &mut ValidationErrors) {
        check_unique_names(
            errors,
            "spec.sources",
            "source",
            self.sources.iter().map(|s| s.name.as_str()),
        );
        let mut topic_owner: HashMap<&str, &str> = HashMap::new();
        for (i, source) in self.sources.iter().enumerate() {
            let at = format!("spec.sources[{i}]");
            match (&source.part, &source.discriminator) {
                (Some(_), Some(_)) => {
                    errors.push(&at, "set exactly one of part and discriminator, not both")
                }
                (None, None) => errors.push(&at, "set exactly one of part and discriminator"),
                _ => {}
            }
            for (k, topic) in source.topics.iter().enumerate() {
                if let Some(owner) = topic_owner.insert(topic, &source.name) {
                    errors.push(
                        format!("{at}.topics[{k}]"),
                        format!("topic {topic:?} is already read by source {owner:?}"),
                    );
                }
            }
            let parts = source.parts();
            let mut seen: HashMap<(Part, &str), usize> = HashMap::new();
            for (k, field) in source.fields.iter().enumerate() {
                if field.name == EVENT_TIME_FIELD || field.name == TRACKING_NUMBER_FIELD {
                    errors.push(
                        format!("{at}.fields[{k}].name"),
                        format!("{:?} is reserved: every action has it", field.name),
                    );
                }
                for (m, part) in field.parts.iter().enumerate() {
                    if !parts.contains(part) {
                        errors.push(
                            format!("{at}.fields[{k}].parts[{m}]"),
                            format!("source {:?} carries no {part} part", source.name),
                        );
                    }
                }
                for part in &parts {
                    if !field.parts.is_empty() && !field.parts.contains(part) {
                        continue;
                    }
                    if let Some(first) = seen.insert((*part, field.name.as_str()), k) {
                        errors.push(
                            format!("{at}.fields[{k}].name"),
                            format!(
                                "duplicate field {:?} for part {part} (also {at}.fields[{first}])",
                                field.name
                            ),
                        );
                    }
                }
            }
            for (k, rule) in source.filter.iter().enumerate() {
                let wants_values =
                    matches!(rule.operator, FilterOperator::In | FilterOperator::NotIn);
                if wants_values && rule.values.is_empty() {
                    errors.push(
                        format!("{at}.filter[{k}].values"),
                        format!("{:?} needs at least one value", rule.operator),
                    );
                } else if !wants_values && !rule.values.is_empty() {
                    errors.push(
                        format!("{at}.filter[{k}].values"),
                        format!("{:?} takes no values", rule.operator),
                    );
                }
            }
        }
    }

    fn validate_join(&self, errors: &mut ValidationErrors) {
        let join = &self.join;
        let carried: BTreeSet<Part> = self.sources.iter().flat_map(SourceSpec::parts).collect();
        let mut required_seen = BTreeSet::new();
        for (k, part) in join.required.iter().enumerate() {
            if !required_seen.insert(*part) {
                errors.push(
                    format!("spec.join.required[{k}]"),
                    format!("part {part} is listed twice"),
                );
            } else if !carried.contains(part) {
                errors.push(
                    format!("spec.join.required[{k}]"),
                    format!("required part {part} has no source"),
                );
            }
        }
        if join.lateness.is_zero() {
            errors.push("spec.join.lateness", "must be greater than 0s");
        }
        if join.dedupe < join.lateness {
            errors.push(
                "spec.join.dedupe",
                format!(
                    "dedupe horizon {} is shorter than lateness {}: a duplicate part arriving in between would start a new action that later expires as a false incomplete",
                    join.dedupe, join.lateness
                ),
            );
        }
    }

    fn validate_scaling(&self, errors: &mut ValidationErrors) {
        let key_groups = i32::from(self.key_groups);
        if self.key_groups == 0 || self.key_groups > crate::keygroup::MAX_KEY_GROUPS {
            errors.push(
                "spec.keyGroups",
                format!("must be between 1 and {}", crate::keygroup::MAX_KEY_GROUPS),
            );
        }
        if self.workers.replicas < 0 {
            errors.push("spec.workers.replicas", "must not be negative");
        }
        if self.workers.replicas > key_groups {
            errors.push(
                "spec.workers.replicas",
                format!("{} workers for {key_groups} key groups: a worker without a key group does nothing", self.workers.replicas),
            );
        }
        if let Some(auto) = &self.autoscaling {
            if auto.min_replicas > auto.max_replicas {
                errors.push(
                    "spec.autoscaling.minReplicas",
                    format!(
                        "minReplicas {} is above maxReplicas {}",
                        auto.min_replicas, auto.max_replicas
                    ),
                );
            }
            if auto.max_replicas > key_groups {
                errors.push(
                    "spec.autoscaling.maxReplicas",
                    format!(
                        "maxReplicas {} is above keyGroups {key_groups}",
                        auto.max_replicas
                    ),
                );
            }
            if auto.target_lag_seconds.is_some() == auto.lag_per_replica.is_some() {
                errors.push(
                    "spec.autoscaling",
                    "set exactly one of targetLagSeconds and lagPerReplica",
                );
            }
        }
    }

    fn validate_outputs(&self, errors: &mut ValidationErrors) {
        let outputs = &self.outputs;
        if !self.processes.is_empty() && outputs.metrics.is_none() {
            errors.push(
                "spec.outputs.metrics",
                "required when spec.processes is set",
            );
        }
        let source_topics: BTreeSet<&str> = self
            .sources
            .iter()
            .flat_map(|s| s.topics.iter().map(String::as_str))
            .collect();
        let named = [
            ("actions", Some(&outputs.actions)),
            ("incomplete", Some(&outputs.incomplete)),
            ("deadLetters", Some(&outputs.dead_letters)),
            ("metrics", outputs.metrics.as_ref()),
            ("alerts", outputs.alerts.as_ref()),
        ];
        let mut used: HashMap<&str, &str> = HashMap::new();
        for (name, topic) in named {
            let Some(topic) = topic else { continue };
            if source_topics.contains(topic.as_str()) {
                errors.push(
                    format!("spec.outputs.{name}"),
                    format!("topic {topic:?} is also a source topic"),
                );
            }
            if let Some(other) = used.insert(topic, name) {
                errors.push(
                    format!("spec.outputs.{name}"),
                    format!("topic {topic:?} is also the {other} output"),
                );
            }
        }
    }
}

impl SourceSpec {
    /// The parts this source carries (none when both or neither of part and discriminator are set).
    pub fn parts(&self) -> Vec<Part> {
        match (&self.part, &self.discriminator) {
            (Some(part), None) => vec![*part],
            (None, Some(d)) => d
                .values
                .values()
                .copied()
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect(),
            _ => Vec::new(),
        }
    }
}

fn check_unique_names<'a>(
    errors: &mut ValidationErrors,
    list: &str,
    what: &str,
    names: impl Iterator<Item = &'a str>,
) {
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, name) in names.enumerate() {
        if let Some(j) = first.insert(name, i) {
            let field = if list.ends_with(".names") {
                format!("{list}[{i}]")
            } else {
                format!("{list}[{i}].name")
            };
            errors.push(
                field,
                format!("duplicate {what} name {name:?} (also {list}[{j}])"),
            );
        }
    }
}

fn check_action_root(field: &JsonPointer) -> Result<(), String> {
    let root = field
        .segments()
        .first()
        .map(String::as_str)
        .unwrap_or_default();
    if root == TRACKING_NUMBER_FIELD || Part::from_name(root).is_some() {
        Ok(())
    } else {
        Err(format!(
            "unknown field {field}: a joined action has /request, /response, /tracking and /{TRACKING_NUMBER_FIELD}"
        ))
    }
}

/// CEL's type identifiers (`type(x) == string`): names, but not variables of the action.
const CEL_TYPE_NAMES: [&str; 10] = [
    "bool",
    "bytes",
    "double",
    "int",
    "list",
    "map",
    "null_type",
    "string",
    "type",
    "uint",
];

/// Parses a CEL predicate and returns the fields of the joined action it reads, as pointers
/// (`request.path` reads `/request/path`). Fails on a syntax error or an unknown variable.
pub fn predicate_references(source: &str) -> Result<Vec<JsonPointer>, String> {
    let paths = crate::cel::guarded(|| {
        let expr = cel_parser::Parser::default()
            .parse(source)
            .map_err(|errors| match errors.errors.first() {
                Some(e) => format!("invalid CEL at {}:{}: {}", e.pos.0, e.pos.1, e.msg),
                None => "invalid CEL".to_string(),
            })?;
        let mut paths = Vec::new();
        collect_paths(&expr, &mut Vec::new(), &mut paths);
        Ok::<_, String>(paths)
    })
    .map_err(|e| e.to_string())??;
    let mut refs = Vec::new();
    for path in paths {
        let root = path[0].as_str();
        if CEL_TYPE_NAMES.contains(&root) && path.len() == 1 {
            continue;
        }
        if root != TRACKING_NUMBER_FIELD && Part::from_name(root).is_none() {
            return Err(format!(
                "unknown variable {root:?}: predicates see request, response, tracking and {TRACKING_NUMBER_FIELD}"
            ));
        }
        if let Some(pointer) = JsonPointer::from_segments(&path)
            && !refs.contains(&pointer)
        {
            refs.push(pointer);
        }
    }
    Ok(refs)
}

/// Collects the longest `ident.field.field` chains of an expression, skipping variables bound
/// by comprehensions (`x` in `list.exists(x, ...)`).
fn collect_paths(expr: &IdedExpr, bound: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    if let Some(path) = select_chain(expr) {
        if !bound.contains(&path[0]) {
            out.push(path);
        }
        return;
    }
    match &expr.expr {
        Expr::Select(select) => collect_paths(&select.operand, bound, out),
        Expr::Call(call) => {
            if let Some(target) = &call.target {
                collect_paths(target, bound, out);
            }
            for arg in &call.args {
                collect_paths(arg, bound, out);
            }
        }
        Expr::List(list) => list
            .elements
            .iter()
            .for_each(|e| collect_paths(e, bound, out)),
        Expr::Map(map) => map
            .entries
            .iter()
            .for_each(|e| collect_entry(&e.expr, bound, out)),
        Expr::Struct(s) => s
            .entries
            .iter()
            .for_each(|e| collect_entry(&e.expr, bound, out)),
        Expr::Comprehension(c) => {
            collect_paths(&c.iter_range, bound, out);
            collect_paths(&c.accu_init, bound, out);
            let depth = bound.len();
            bound.push(c.iter_var.clone());
            bound.push(c.accu_var.clone());
            collect_paths(&c.loop_cond, bound, out);
            collect_paths(&c.loop_step, bound, out);
            collect_paths(&c.result, bound, out);
            bound.truncate(depth);
        }
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn collect_entry(entry: &EntryExpr, bound: &mut Vec<String>, out: &mut Vec<Vec<String>>) {
    match entry {
        EntryExpr::StructField(f) => collect_paths(&f.value, bound, out),
        EntryExpr::MapEntry(m) => {
            collect_paths(&m.key, bound, out);
            collect_paths(&m.value, bound, out);
        }
    }
}

/// `a.b.c` as `["a", "b", "c"]`; `None` when the chain does not start at an identifier.
fn select_chain(expr: &IdedExpr) -> Option<Vec<String>> {
    match &expr.expr {
        Expr::Ident(name) => Some(vec![name.clone()]),
        Expr::Select(select) => {
            let mut chain = select_chain(&select.operand)?;
            chain.push(select.field.clone());
            Some(chain)
        }
        _ => None,
    }
}
