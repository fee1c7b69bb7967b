//! The buttons under results. Their `custom_id`s carry everything a click needs, the job
//! and the action, so a button works on any message, old or new, after any restart: the
//! gateway keeps no state per message.
//!
//! The form is `hx:<action>:<job id>`, where `<action>` is [`Action::key`]
//! (`upscale:1`, `vary_strong:3`, `reroll`). Discord allows 100 characters; the longest is
//! 58.

use huaxian_store::Action;
use serenity::all::{ButtonStyle, CreateActionRow, CreateButton, ReactionType};
use uuid::Uuid;

/// Every component id of ours starts with this.
pub const PREFIX: &str = "hx:";

/// The `custom_id` of `action` on `job`.
pub fn custom_id(action: Action, job: Uuid) -> String {
    format!("{PREFIX}{}:{job}", action.key())
}

/// Reads a button's `custom_id`; `None` when it is not a result button of ours.
pub fn parse(custom_id: &str) -> Option<(Action, Uuid)> {
    let rest = custom_id.strip_prefix(PREFIX)?;
    let (action, job) = rest.rsplit_once(':')?;
    Some((Action::parse(action)?, Uuid::parse_str(job).ok()?))
}

/// The rows under a grid: `U1 U2 U3 U4 🔄` and `V1 V2 V3 V4`.
pub fn grid_rows(job: Uuid) -> Vec<CreateActionRow> {
    let upscales = (0..4u8).map(|i| {
        CreateButton::new(custom_id(Action::Upscale(i), job))
            .label(format!("U{}", i + 1))
            .style(ButtonStyle::Secondary)
    });
    let reroll = CreateButton::new(custom_id(Action::Reroll, job))
        .emoji(ReactionType::Unicode("🔄".into()))
        .style(ButtonStyle::Secondary);
    let variations = (0..4u8).map(|i| {
        CreateButton::new(custom_id(Action::VarySubtle(i), job))
            .label(format!("V{}", i + 1))
            .style(ButtonStyle::Secondary)
    });
    vec![
        CreateActionRow::Buttons(upscales.chain([reroll]).collect()),
        CreateActionRow::Buttons(variations.collect()),
    ]
}

/// The row under a single image (after U1–U4 or an upscale): the image is image 0 of its
/// job.
pub fn image_rows(job: Uuid) -> Vec<CreateActionRow> {
    let buttons = [
        (Action::UpscaleSubtle(0), "Upscale (Subtle)"),
        (Action::UpscaleCreative(0), "Upscale (Creative)"),
        (Action::VarySubtle(0), "Vary (Subtle)"),
        (Action::VaryStrong(0), "Vary (Strong)"),
    ]
    .into_iter()
    .map(|(action, label)| {
        CreateButton::new(custom_id(action, job))
            .label(label)
            .style(ButtonStyle::Secondary)
    })
    .collect();
    vec![CreateActionRow::Buttons(buttons)]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn custom_ids_round_trip_within_discords_limit() {
        let job = Uuid::new_v4();
        for i in 0..4 {
            for action in [
                Action::Upscale(i),
                Action::UpscaleSubtle(i),
                Action::UpscaleCreative(i),
                Action::VarySubtle(i),
                Action::VaryStrong(i),
            ] {
                let id = custom_id(action, job);
                assert!(id.len() <= 100, "{id}");
                assert_eq!(parse(&id), Some((action, job)));
            }
        }
        assert_eq!(
            parse(&custom_id(Action::Reroll, job)),
            Some((Action::Reroll, job))
        );
    }

    #[test]
    fn foreign_and_damaged_ids_are_not_ours() {
        let job = Uuid::new_v4();
        assert_eq!(parse(&format!("other:upscale:1:{job}")), None);
        assert_eq!(parse(&format!("hx:upscale:9:{job}")), None);
        assert_eq!(parse("hx:upscale:1:not-a-uuid"), None);
        assert_eq!(parse("hx:"), None);
        assert_eq!(parse("hx:set:model"), None);
    }
}
