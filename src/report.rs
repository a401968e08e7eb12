//! The plan / result report of `sync` (SPEC §3): one JSON document, or a terraform-like text
//! layout (`+` create, `~` update with each field's old → new, `-` deactivate).

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use crate::executor::ActionResult;
use crate::plan::{Action, Op};
use crate::scim::wire;
use crate::sync::{Mode, RunOutcome};

/// The JSON report.
pub fn to_json(outcome: &RunOutcome) -> Value {
    let mut summary = outcome.plan.summary();
    summary.failed = outcome.failed();
    let actions: Vec<Value> = outcome
        .plan
        .actions
        .iter()
        .enumerate()
        .map(|(index, action)| {
            let result = outcome
                .results
                .as_ref()
                .and_then(|results| results.get(index));
            action_json(action, result, &outcome.extension_schema)
        })
        .collect();
    let mut report = json!({
        "mode": match outcome.mode { Mode::DryRun => "dry-run", Mode::Apply => "applied" },
        "source": {
            "kind": outcome.read.kind,
            "users_read": outcome.read.records_read(),
            "in_scope": outcome.plan.in_scope,
            "full": outcome.read.full,
        },
        "summary": summary,
        "actions": actions,
        "orphans": outcome.plan.orphans,
        "drift": outcome.plan.drift,
    });
    if let Some(object) = report.as_object_mut() {
        if !outcome.read.warnings.is_empty() {
            object.insert("warnings".into(), json!(outcome.read.warnings));
        }
        if let Some(reason) = &outcome.stopped {
            object.insert("stopped".into(), json!(reason));
        }
    }
    report
}

fn action_json(action: &Action, result: Option<&ActionResult>, extension_schema: &str) -> Value {
    let mut object = match serde_json::to_value(action) {
        Ok(Value::Object(object)) => object,
        _ => Map::new(),
    };
    if action.op == Op::Create
        && let Some(attributes) = &action.attributes
    {
        object.insert(
            "payload".into(),
            wire::user_document(attributes, extension_schema, true),
        );
    }
    match result {
        Some(ActionResult::Ok { note, scim_id }) => {
            object.insert("result".into(), json!("ok"));
            if let Some(note) = note {
                object.insert("note".into(), json!(note));
            }
            if let Some(scim_id) = scim_id
                && !object.contains_key("scim_id")
            {
                object.insert("scim_id".into(), json!(scim_id));
            }
        }
        Some(ActionResult::Failed { error }) => {
            object.insert("result".into(), json!("failed"));
            object.insert("error".into(), json!(error));
        }
        Some(ActionResult::NotSent) | None => {}
    }
    Value::Object(object)
}

/// The text report.
pub fn to_text(outcome: &RunOutcome) -> String {
    let mut out = String::new();
    let read = &outcome.read;
    let heading = match outcome.mode {
        Mode::DryRun => "Plan (dry run: nothing is sent)",
        Mode::Apply => "Sync applied",
    };
    let _ = writeln!(
        out,
        "{heading}: source {} — {} users read, {} in scope, {} read\n",
        read.kind,
        read.records_read(),
        outcome.plan.in_scope,
        if read.full { "full" } else { "incremental" }
    );
    for warning in &read.warnings {
        let _ = writeln!(out, "  warning: {warning}");
    }
    if !read.warnings.is_empty() {
        out.push('\n');
    }
    for (index, action) in outcome.plan.actions.iter().enumerate() {
        let result = outcome
            .results
            .as_ref()
            .and_then(|results| results.get(index));
        write_action(&mut out, action, result);
    }
    if outcome.plan.actions.is_empty() {
        out.push_str("  No changes. SocialTalent matches the source.\n");
    }
    if !outcome.plan.drift.is_empty() {
        out.push_str("\n  Drift (changed in SocialTalent since our last push):\n");
        for drift in &outcome.plan.drift {
            let _ = writeln!(
                out,
                "    {} ({}) {}: ours {}, SocialTalent {}{}",
                drift.user_name,
                drift.idp_id,
                drift.attribute,
                show(&drift.ours),
                show(&drift.theirs),
                if drift.repaired {
                    " — repaired"
                } else {
                    " — reported only"
                }
            );
        }
    }
    if !outcome.plan.orphans.is_empty() {
        out.push_str("\n  Orphans (active SocialTalent accounts no IdP user in scope has):\n");
        for orphan in &outcome.plan.orphans {
            let _ = writeln!(out, "    {} ({})", orphan.user_name, orphan.scim_id);
        }
    }
    let mut summary = outcome.plan.summary();
    summary.failed = outcome.failed();
    let _ = write!(
        out,
        "\n{}: {} to create, {} to adopt, {} to update, {} to reactivate, {} to deactivate, {} held, {} skipped, {} unchanged",
        match outcome.mode {
            Mode::DryRun => "Plan",
            Mode::Apply => "Done",
        },
        summary.create,
        summary.adopted,
        summary.update,
        summary.reactivate,
        summary.deactivate,
        summary.held,
        summary.skipped,
        summary.unchanged,
    );
    if outcome.mode == Mode::Apply {
        let _ = write!(out, ", {} failed", summary.failed);
    }
    out.push_str(".\n");
    if let Some(reason) = &outcome.stopped {
        let _ = writeln!(
            out,
            "The run stopped early: {reason}. Unsent writes are retried on the next run."
        );
    }
    if let Some(reason) = &outcome.plan.held_reason
        && summary.held > 0
    {
        let _ = writeln!(
            out,
            "Deactivations held: {reason}. Review them, then run `socialtalent-sync sync --allow-deactivations`."
        );
    }
    out
}

fn write_action(out: &mut String, action: &Action, result: Option<&ActionResult>) {
    let (sign, word) = match action.op {
        Op::Create => ("+", "create"),
        Op::Adopt => ("=", "adopt"),
        Op::Update => ("~", "update"),
        Op::Reactivate => ("+", "reactivate"),
        Op::Deactivate => ("-", "deactivate"),
        Op::Held => ("!", "held"),
        Op::Writeback => (">", "writeback"),
        Op::Skip => ("?", "skip"),
    };
    let id = if action.idp_id.0.is_empty() {
        String::new()
    } else {
        format!(" ({})", action.idp_id)
    };
    let _ = write!(out, "  {sign} {word:<10} {}{id}", action.user_name);
    if let Some(reason) = action
        .reason
        .as_ref()
        .filter(|_| action.op != Op::Reactivate)
    {
        let _ = write!(out, ": {reason}");
    }
    if let Some(error) = &action.error {
        let _ = write!(out, ": {error}");
    }
    match result {
        Some(ActionResult::Ok { note, .. }) => {
            out.push_str("  [ok");
            if let Some(note) = note {
                let _ = write!(out, "; {note}");
            }
            out.push(']');
        }
        Some(ActionResult::Failed { error }) => {
            let _ = write!(out, "  [FAILED: {error}]");
        }
        Some(ActionResult::NotSent) | None => {}
    }
    out.push('\n');
    match action.op {
        Op::Create => {
            for (attribute, value) in action.attributes.iter().flat_map(|a| a.iter()) {
                let _ = writeln!(out, "        {attribute:<18} = {}", show(value));
            }
        }
        _ => {
            for change in &action.changes {
                let _ = writeln!(
                    out,
                    "        {:<18} : {} → {}",
                    change.attribute,
                    show(&change.from),
                    show(&change.to)
                );
            }
        }
    }
}

fn show(value: &Value) -> String {
    match value {
        Value::Null => "(unset)".into(),
        other => other.to_string(),
    }
}
