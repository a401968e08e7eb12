//! Write-back planning (`[writeback]`): which IdP users should get SocialTalent's id (or another
//! rendered value) in an IdP attribute, because the attribute differs from what the template
//! renders. Pure: values in, actions out. Users whose write-back failed are planned again on the
//! next run because their attribute still differs (the run reads them again: `sync` keeps a list
//! of them in the state for incremental runs).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::mapping::{Decision, MappedUser, Mapper};
use crate::model::{IdpId, SourceUser};
use crate::plan::{Action, Change, Op};

/// The IdP attribute's current value: a top-level attribute, or `a.b` inside an object
/// (`onPremisesExtensionAttributes.extensionAttribute1`).
pub fn current_value(user: &SourceUser, attribute: &str) -> Option<String> {
    let mut parts = attribute.split('.');
    let attrs = user.attrs.to_map();
    let mut value = attrs.get(parts.next()?)?;
    for part in parts {
        value = value.get(part)?;
    }
    match value {
        Value::String(text) if !text.is_empty() => Some(text.clone()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// Plans the write-backs of a run.
///
/// `accounts` gives the SocialTalent account (id, userName) each IdP user has now; users being
/// created in this run (`pending`) get an action whose value is known only after the create.
pub fn plan(
    mapper: &Mapper,
    attribute: &str,
    mapped: &[MappedUser],
    users: &[Arc<SourceUser>],
    accounts: &HashMap<IdpId, (String, String)>,
    pending: &HashSet<&IdpId>,
) -> Vec<Action> {
    let by_id: HashMap<&IdpId, &Arc<SourceUser>> =
        users.iter().map(|user| (&user.id, user)).collect();
    let mut actions = Vec::new();
    for mapped_user in mapped {
        if !matches!(
            mapped_user.decision,
            Decision::Provision(_) | Decision::Unchanged
        ) {
            continue;
        }
        let Some(user) = by_id.get(&mapped_user.idp_id) else {
            continue;
        };
        let current = current_value(user, attribute);
        let base = Action {
            op: Op::Writeback,
            idp_id: user.id.clone(),
            user_name: user.label().to_owned(),
            ..Action::empty(Op::Writeback)
        };
        match accounts.get(&user.id) {
            Some((scim_id, user_name)) => match mapper.render_writeback(user, scim_id, user_name) {
                None => return Vec::new(),
                Some(Ok(value)) if Some(&value) == current.as_ref() || value.is_empty() => {}
                Some(Ok(value)) => actions.push(Action {
                    user_name: user_name.clone(),
                    scim_id: Some(scim_id.clone()),
                    changes: vec![Change {
                        attribute: attribute.to_owned(),
                        from: current.map_or(Value::Null, Value::String),
                        to: Value::String(value),
                    }],
                    ..base
                }),
                Some(Err(error)) => actions.push(Action {
                    error: Some(error.to_string()),
                    ..base
                }),
            },
            None if pending.contains(&user.id) => actions.push(Action {
                reason: Some(format!("{attribute} is set once the account is created")),
                ..base
            }),
            None => {}
        }
    }
    actions.sort_by(|a, b| a.idp_id.cmp(&b.idp_id));
    actions
}
