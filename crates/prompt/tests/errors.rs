//! Every refusal: which error, where, and what its message tells the user.

use huaxian_prompt::{parse, Limits, PromptError};

fn error(input: &str) -> PromptError {
    match parse(input, &Limits::default()) {
        Ok(specs) => panic!("{input:?} parsed into {specs:?}"),
        Err(error) => error,
    }
}

/// The message of `input`'s error, which must contain each of `parts`.
fn message(input: &str, parts: &[&str]) -> PromptError {
    let error = error(input);
    let message = error.to_string();
    assert!(!message.contains('\n'), "{message}");
    for part in parts {
        assert!(
            message.contains(part),
            "{input:?}: {message:?} lacks {part:?}"
        );
    }
    error
}

#[test]
fn out_of_range_numbers() {
    let error = message(
        "a cat --chaos 150",
        &["`--chaos 150` (character 7): chaos must be a whole number from 0 to 100"],
    );
    assert_eq!(error.offset(), Some(6));
    message(
        "a --c -1",
        &["`--c -1`", "chaos must be a whole number from 0 to 100"],
    );
    message("a --s 1001", &["`--s 1001`", "from 0 to 1000"]);
    message("a --stylize 7.5", &["`--stylize 7.5`", "from 0 to 1000"]);
    message(
        "a --seed 4294967296",
        &["`--seed 4294967296`", "from 0 to 4294967295"],
    );
    message("a --seed x", &["`--seed x`", "seed must be a whole number"]);
    message("a --stop 9", &["`--stop 9`", "from 10 to 100"]);
    message("a --stop 101", &["`--stop 101`", "from 10 to 100"]);
    message("a --steps 0", &["`--steps 0`", "from 1 to 150"]);
    message("a --steps 151", &["`--steps 151`", "from 1 to 150"]);
    message(
        "a --repeat 5",
        &["`--repeat 5`", "repeat must be a whole number from 1 to 4"],
    );
    message("a --r 0", &["`--r 0`", "from 1 to 4"]);
}

#[test]
fn bad_quality() {
    message(
        "a --q 3",
        &["`--q 3`", "quality must be one of .25, .5, 1 or 2"],
    );
    message("a --quality high", &["`--quality high`", ".25, .5, 1 or 2"]);
    message("a --q nan", &["`--q nan`", ".25, .5, 1 or 2"]);
}

#[test]
fn bad_aspect_ratio() {
    let allowed = "aspect ratio must be whole numbers W:H from 1:4 to 4:1";
    message("a --ar 5:1", &["`--ar 5:1`", allowed]);
    message("a --ar 1:5", &["`--ar 1:5`", allowed]);
    message("a --ar 16x9", &["`--ar 16x9`", allowed]);
    message("a --ar 0:1", &["`--ar 0:1`", allowed]);
    message("a --ar 1.5:1", &["`--ar 1.5:1`", allowed]);
    let wide = Limits {
        max_aspect: 8.0,
        ..Limits::default()
    };
    assert!(parse("a --ar 8:1", &wide).is_ok());
}

#[test]
fn unknown_names_list_the_choices() {
    message(
        "a --sampler plms",
        &[
            "`--sampler plms`",
            "sampler must be one of ddim, euler, euler_a, euler_karras, dpmpp_2m, \
             dpmpp_2m_karras, dpmpp_2m_sde, dpmpp_2m_sde_karras, lcm",
        ],
    );
    message(
        "a --model sdxl",
        &["`--model sdxl`", "model must be one of sd15"],
    );
}

#[test]
fn unknown_flag() {
    let error = message(
        "a cat --v 6",
        &[
            "`--v` (character 7): unknown parameter",
            "--ar (--aspect), --seed, --no, --negative, --chaos (--c), --stylize (--s)",
            "--quality (--q), --stop, --steps, --sampler, --model, --expand, --repeat (--r)",
        ],
    );
    assert_eq!(
        error,
        PromptError::UnknownFlag {
            token: "--v".into(),
            offset: 6
        }
    );
    message("a —tile", &["`—tile`", "unknown parameter"]);
    message("a --ar=16:9", &["`--ar=16:9`", "unknown parameter"]);
}

#[test]
fn missing_values() {
    message(
        "a --ar",
        &["`--ar` (character 3) needs a value: aspect ratio"],
    );
    message(
        "a --seed --ar 1:1",
        &["`--seed` (character 3) needs a value", "seed must"],
    );
    message(
        "a --no",
        &["`--no` (character 3) needs a value", "separated by commas"],
    );
    message("a --no , ,", &["`--no , ,`", "separated by commas"]);
    message(
        "a --negative",
        &["`--negative` (character 3) needs a value"],
    );
}

#[test]
fn duplicates() {
    let error = message(
        "a --seed 1 --seed 2",
        &[
            "`--seed` (character 12): this parameter is already set",
            "only --no may repeat",
        ],
    );
    assert_eq!(error.offset(), Some(11));
    message("a --s 1 --stylize 2", &["`--stylize`", "already set"]);
    message("a --AR 1:1 —ar 2:1", &["`—ar`", "already set"]);
    message(
        "a --negative x --negative y",
        &["`--negative`", "already set"],
    );
}

#[test]
fn steps_and_quality_conflict() {
    message(
        "a --steps 20 --q 2",
        &["`--q 2` (character 14) conflicts with `--steps 20`: both set the step count"],
    );
    message(
        "a --q 2 --steps 20",
        &["`--steps 20` (character 9) conflicts with `--q 2`"],
    );
}

#[test]
fn text_after_parameters() {
    let error = message(
        "a cat --ar 16:9 in the snow",
        &[
            "`in` (character 17) is not a value of `--ar`",
            "put prompt text before",
        ],
    );
    assert_eq!(error.offset(), Some(16));
    message("a --seed 1 2", &["`2`", "not a value of `--seed`"]);
    message("a --ar 1:1 --", &["`--`", "not a value of `--ar`"]);
}

#[test]
fn braces() {
    let error = message(
        "a {red, blue car",
        &[
            "`{` (character 3) is never closed",
            r"`\{` for a literal brace",
        ],
    );
    assert_eq!(error.offset(), Some(2));
    message(
        "a red} car",
        &["`}` (character 6) has no matching `{`", r"`\}`"],
    );
    let deep = format!("{}a", "{".repeat(17));
    message(
        &deep,
        &["`{` (character 17): braces may nest at most 16 deep"],
    );
}

#[test]
fn too_many_jobs() {
    let error = message(
        "{a, b, c} {d, e, f} --r 2",
        &["this prompt would make 18 jobs (permutations × repeat); at most 10 are allowed"],
    );
    assert_eq!(
        error,
        PromptError::TooManyJobs {
            jobs: 18,
            at_least: false,
            max: 10
        }
    );
    message("{a, b, c} --r 4", &["would make 12 jobs", "at most 10"]);
    message("{a,b,c,d,e,f,g,h,i,j,k}", &["would make 11 jobs"]);

    let huge = "{a,b,c,d}".repeat(40);
    let error = message(&huge, &["would make at least 18446744073709551615 jobs"]);
    assert_eq!(error.offset(), None);
}

#[test]
fn empty_prompt() {
    message("", &["the prompt is empty"]);
    message("   --ar 16:9", &["the prompt is empty"]);
    message("{} --seed 1", &["the prompt is empty"]);
    message(":: ::", &["the prompt is empty"]);
    assert!(parse("{a, } b", &Limits::default()).is_ok());
    assert_eq!(error("{a, }"), PromptError::EmptyPrompt);
}

#[test]
fn too_long() {
    let limits = Limits {
        max_prompt_chars: 10,
        ..Limits::default()
    };
    assert!(parse("0123456789", &limits).is_ok());
    assert!(parse("  01234   56789  ", &limits).is_err());
    assert!(parse("01234 5678", &limits).is_ok());
    let error = parse("01234567890", &limits).unwrap_err();
    assert_eq!(
        error.to_string(),
        "the prompt is 11 characters long; at most 10 are allowed"
    );
    let error = parse("a --no 01234, 56789", &limits).unwrap_err();
    assert_eq!(error, PromptError::NegativeTooLong { chars: 12, max: 10 });
    assert!(error.to_string().contains("negative prompt"));
}

#[test]
fn weights() {
    let error = message(
        "a::1000 b",
        &["`::1000` (character 2): a multi-prompt weight must be a number from -100 to 100"],
    );
    assert_eq!(error.offset(), Some(1));
    message("::2 cat", &["`::2` (character 1) weighs an empty part"]);
    message(
        "a::1 b::-1",
        &["the multi-prompt weights add up to 0; their total must be positive"],
    );
    message("cat::-0.5", &["add up to -0.5", "must be positive"]);
}

#[test]
fn offsets_count_characters_not_bytes() {
    let error = error("日本の猫 --chaos 500");
    assert_eq!(error.offset(), Some(5));
    assert!(error.to_string().contains("(character 6)"));
}

#[test]
fn errors_inside_braces_point_into_the_input() {
    let error = error("cat {--chaos 5, --chaos 500}");
    assert_eq!(error.offset(), Some(16));
    assert!(error
        .to_string()
        .starts_with("`--chaos 500` (character 17)"));
}

#[test]
fn expand_without_an_expander_or_with_a_bad_value() {
    message(
        "a cat --expand",
        &[
            "`--expand` (character 7)",
            "prompt expansion is not set up on this server",
        ],
    );
    // Turning it off needs no expander.
    assert_eq!(
        parse("a cat --expand off", &Limits::default()).unwrap()[0].expand,
        Some(false)
    );
    let limits = Limits {
        expansion: true,
        ..Limits::default()
    };
    let error = parse("a cat --expand maybe", &limits)
        .unwrap_err()
        .to_string();
    assert!(error.contains("--expand on / --expand off"), "{error}");
}
