//! `grandstand partners add|list|revoke`: partner keys in the history store.

use anyhow::{bail, Context};
use backends::{PartnerError, PartnerStore};
use protocol::partner::{self, Partner};

use crate::cli::PartnersCommand;
use crate::connect;

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs one partners command; returns what it prints.
pub async fn run(command: PartnersCommand) -> anyhow::Result<String> {
    match &command {
        PartnersCommand::Add { tls, .. }
        | PartnersCommand::List { tls, .. }
        | PartnersCommand::Revoke { tls, .. } => tls.apply()?,
    }
    match command {
        PartnersCommand::Add {
            name,
            delay_ms,
            max_streams,
            matches,
            store,
            ..
        } => {
            if !partner::valid_name(&name) {
                bail!("name: 1 to 64 letters, digits, '-', '_' or '.', got {name:?}");
            }
            if delay_ms.is_some_and(|d| d > 600_000) {
                bail!("delay-ms: at most 600000 (10 minutes)");
            }
            if max_streams == Some(0) {
                bail!("max-streams: at least 1");
            }
            let store = connect::history(&store).await?;
            let p = Partner {
                name,
                delay_ms,
                max_streams,
                matches,
            };
            let key = partner::new_key(rand::random());
            match store
                .add_partner(&p, &partner::key_hash(&key), now_ms())
                .await
            {
                Ok(()) => {}
                Err(PartnerError::Exists(name)) => bail!("a partner named {name:?} exists already"),
                Err(e) => return Err(e).context("adding the partner"),
            }
            Ok(format!(
                "partner {} added ({}). Its key, shown only now:\n{key}\n",
                p.name,
                describe(&p)
            ))
        }
        PartnersCommand::List { store, .. } => {
            let store = connect::history(&store).await?;
            let entries = store.partners().await.context("listing partners")?;
            let mut out = format!("{:<24} {:<8} {}\n", "NAME", "STATE", "SETTINGS");
            for e in entries {
                let state = if e.revoked_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                out.push_str(&format!(
                    "{:<24} {:<8} {}\n",
                    e.partner.name,
                    state,
                    describe(&e.partner)
                ));
            }
            Ok(out)
        }
        PartnersCommand::Revoke { name, store, .. } => {
            let store = connect::history(&store).await?;
            if !store
                .revoke_partner(&name, now_ms())
                .await
                .context("revoking the partner")?
            {
                bail!("no active partner named {name:?}");
            }
            Ok(format!(
                "partner {name} revoked; running roles refuse its key within {} s\n",
                httpkit::PARTNER_REFRESH.as_secs()
            ))
        }
    }
}

fn describe(p: &Partner) -> String {
    format!(
        "delay {}, streams {}, matches {}",
        p.delay_ms
            .map_or("the match's own".to_string(), |d| format!("{d} ms")),
        p.max_streams
            .map_or("per-user cap".to_string(), |n| format!("at most {n}")),
        p.matches.as_deref().unwrap_or("all"),
    )
}
