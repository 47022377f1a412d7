//! `br agents`: the coding-agent profiles in effect — br's built-ins, with a plan's
//! `[agent.NAME]` tables over them — and what each runs.

use std::path::Path;

use br_core::Plan;
use br_core::agent::{AgentProfile, builtin_profiles};

use crate::cli::AgentsArgs;
use crate::context::Context;
use crate::escape::esc;
use crate::exit::{Exit, usage};
use crate::output::{print, print_json};
use crate::table::{Table, or_dash};

pub(super) fn agents(ctx: &Context, args: AgentsArgs) -> anyhow::Result<Exit> {
    let plan = match &args.plan {
        Some(path) => Some(read(ctx, path)?),
        // The plan of the directory, when there is one: what `br run` would use.
        None if ctx.path(Path::new("br.toml")).is_file() => Some(read(ctx, Path::new("br.toml"))?),
        None => None,
    };
    let mut profiles = builtin_profiles();
    for own in plan.iter().flat_map(|p| p.agents.iter()) {
        match profiles.iter_mut().find(|p| p.name == own.name) {
            Some(p) => *p = own.clone(),
            None => profiles.push(own.clone()),
        }
    }
    if ctx.json {
        print_json(&profiles)?;
        return Ok(Exit::Success);
    }
    print(&render(&profiles))?;
    Ok(Exit::Success)
}

fn read(ctx: &Context, path: &Path) -> anyhow::Result<Plan> {
    let bytes = std::fs::read(ctx.path(path))
        .map_err(|e| usage(format!("cannot read plan {}: {e}", path.display())))?;
    Ok(Plan::parse_bytes(&bytes, path)?)
}

fn render(profiles: &[AgentProfile]) -> String {
    let mut table = Table::new(&["AGENT", "FROM", "POOL", "CONFIG", "USAGE", "RUN"]);
    for p in profiles {
        let config = match (&p.config_env, &p.config_from) {
            (Some(env), Some(from)) => format!("{env} (copy of {from})"),
            (Some(env), None) => format!("{env} (empty)"),
            _ => "-".into(),
        };
        table.row(vec![
            esc(&p.name).to_string(),
            if p.from_plan { "plan" } else { "built-in" }.into(),
            or_dash(p.pool.as_deref().map(esc)),
            esc(&config).to_string(),
            p.usage.as_str().into(),
            esc(&p.run).to_string(),
        ]);
    }
    let mut text = table.render();
    text.push_str(
        "a task runs one with `agent = \"NAME\"` instead of `run`; each attempt reads its prompt \
         from $BR_PROMPT_FILE (docs/agents.md)\n",
    );
    text
}
