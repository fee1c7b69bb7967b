//! The slash commands, registered at start: globally, or in one guild for development
//! (`[discord] guild_id`), where changes show at once.

use serenity::all::{Command, CommandOptionType, CreateCommand, CreateCommandOption, GuildId};
use serenity::http::Http;
use serenity::model::Permissions;
use tracing::info;

use crate::App;

/// Every command huaxian serves.
pub fn definitions() -> Vec<CreateCommand> {
    let image = |name: &str, required: bool| {
        CreateCommandOption::new(CommandOptionType::Attachment, name, "An image to blend")
            .required(required)
    };
    // /imagine's image prompts after the first; with several, the worker blends them.
    let more_image = |name: &str| {
        CreateCommandOption::new(
            CommandOptionType::Attachment,
            name,
            "Another image to start from (blended with the others)",
        )
        .required(false)
    };
    let user = |description: &str| {
        CreateCommandOption::new(CommandOptionType::User, "user", description).required(true)
    };
    let sub = |name: &str, description: &str| {
        CreateCommandOption::new(CommandOptionType::SubCommand, name, description)
    };
    let word = CreateCommandOption::new(CommandOptionType::String, "word", "The word")
        .required(true)
        .max_length(100);

    vec![
        CreateCommand::new("imagine")
            .description("Make four images from a prompt")
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "prompt",
                    "What to draw, with --ar, --no, --seed, --chaos, --stylize and other parameters",
                )
                .required(true)
                .max_length(4000),
            )
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::Attachment,
                    "image",
                    "An image to start from",
                )
                .required(false),
            )
            .add_option(
                CreateCommandOption::new(CommandOptionType::String, "model", "The model to use")
                    .required(false)
                    .set_autocomplete(true),
            )
            .add_option(more_image("image2"))
            .add_option(more_image("image3"))
            .add_option(more_image("image4"))
            .add_option(more_image("image5")),
        CreateCommand::new("blend")
            .description("Blend 2 to 5 images into four new ones")
            .add_option(image("image1", true))
            .add_option(image("image2", true))
            .add_option(image("image3", false))
            .add_option(image("image4", false))
            .add_option(image("image5", false))
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::String,
                    "dimensions",
                    "The shape of the result",
                )
                .add_string_choice("Square", "1:1")
                .add_string_choice("Portrait", "2:3")
                .add_string_choice("Landscape", "3:2"),
            ),
        CreateCommand::new("settings").description("Your defaults: model, stylize, lane, sampler"),
        CreateCommand::new("info")
            .description("Your quota, lane, and running and queued jobs"),
        CreateCommand::new("fast").description("Use fast GPU time (counts against your quota)"),
        CreateCommand::new("relax").description("Use the relax lane (free, waits behind fast jobs)"),
        CreateCommand::new("cancel").description("Cancel one of your queued or running jobs"),
        CreateCommand::new("admin")
            .description("Operate huaxian (admins only)")
            .default_member_permissions(Permissions::MANAGE_GUILD)
            .dm_permission(false)
            .add_option(sub("queue", "Queue depth, workers and latency"))
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::SubCommandGroup,
                    "quota",
                    "A user's fast quota",
                )
                .add_sub_option(
                    sub("grant", "Give a user fast GPU seconds")
                        .add_sub_option(user("Who receives the time"))
                        .add_sub_option(
                            CreateCommandOption::new(
                                CommandOptionType::Integer,
                                "seconds",
                                "GPU seconds (negative takes time away)",
                            )
                            .required(true)
                            .min_number_value(-1_000_000.0)
                            .max_int_value(1_000_000),
                        ),
                )
                .add_sub_option(
                    sub("reset", "Reset a user's quota to a full period")
                        .add_sub_option(user("Whose quota")),
                ),
            )
            .add_option(sub("ban", "Stop a user making images").add_sub_option(user("Who")))
            .add_option(sub("unban", "Let a user make images again").add_sub_option(user("Who")))
            .add_option(
                sub("cancel", "Cancel any job").add_sub_option(
                    CreateCommandOption::new(CommandOptionType::String, "job", "The job id")
                        .required(true),
                ),
            )
            .add_option(
                CreateCommandOption::new(
                    CommandOptionType::SubCommandGroup,
                    "banned-words",
                    "Words prompts in this server may not contain",
                )
                .add_sub_option(sub("add", "Ban a word").add_sub_option(word.clone()))
                .add_sub_option(sub("remove", "Allow a word again").add_sub_option(word))
                .add_sub_option(sub("list", "The banned words")),
            ),
    ]
}

/// Registers [`definitions`] (a bulk overwrite, so stale commands disappear).
pub async fn register(app: &App, http: &Http) -> Result<(), serenity::Error> {
    let commands = definitions();
    match app.settings.discord.guild_id {
        Some(guild) => {
            GuildId::new(guild).set_commands(http, commands).await?;
            info!(guild, "slash commands registered in the development guild");
        }
        None => {
            Command::set_global_commands(http, commands).await?;
            info!("slash commands registered globally");
        }
    }
    Ok(())
}
