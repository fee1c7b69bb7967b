//! Property tests: no input panics, and every accepted prompt yields specs within bounds.

use huaxian_prompt::{parse, JobSpec, Limits, PromptError, QUALITIES, SIZE_STEP};
use proptest::prelude::*;

/// Pieces that look like the language, so generated inputs reach deep into the parser.
const FRAGMENTS: &[&str] = &[
    "--ar",
    "--aspect",
    "—ar",
    "–ar",
    "--seed",
    "--no",
    "--negative",
    "--chaos",
    "--c",
    "--stylize",
    "--s",
    "--quality",
    "--q",
    "--stop",
    "--steps",
    "--sampler",
    "--model",
    "--repeat",
    "--r",
    "--v",
    "--",
    "—",
    "–",
    "--AR",
    "—S",
    "16:9",
    "1:1",
    "4:1",
    "5:1",
    "2:3",
    "0:0",
    "99999999999:1",
    "0",
    "1",
    "2",
    ".25",
    ".5",
    "10",
    "100",
    "150",
    "1000",
    "4294967295",
    "4294967296",
    "-1",
    "euler_a",
    "DDIM",
    "lcm",
    "sd15",
    "{",
    "}",
    ",",
    "\\{",
    "\\}",
    "\\,",
    "{a, b}",
    "{1:1, 16:9}",
    "{--ar 2:1, --s 5}",
    "::",
    "::2",
    "::-1",
    "::0.5",
    "::-100",
    "::1000",
    ":::",
    "cat",
    "red car",
    "日本",
    " ",
    "  ",
    "\t",
    "\n",
    "x,y",
    "\u{2014}seed",
];

fn fragments() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(FRAGMENTS), 0..24).prop_flat_map(|pieces| {
        let count = pieces.len();
        prop::collection::vec(prop::bool::ANY, count).prop_map(move |spaced| {
            let mut input = String::new();
            for (piece, space) in pieces.iter().zip(spaced) {
                input.push_str(piece);
                if space {
                    input.push(' ');
                }
            }
            input
        })
    })
}

fn limits() -> impl Strategy<Value = Limits> {
    (
        prop::sample::select(vec![(512u32, 512u32), (768, 768), (512, 768), (1024, 1024)]),
        1u32..60,
        1u32..200,
        1u32..6,
        1u32..16,
        1usize..300,
        prop::sample::select(vec![1.0f64, 2.0, 4.0, 8.0]),
    )
        .prop_map(
            |(
                native,
                base_steps,
                max_steps,
                max_repeat,
                max_jobs,
                max_prompt_chars,
                max_aspect,
            )| {
                Limits {
                    native_width: native.0,
                    native_height: native.1,
                    base_steps,
                    max_steps,
                    max_repeat,
                    max_jobs,
                    max_prompt_chars,
                    max_aspect,
                    ..Limits::default()
                }
            },
        )
}

/// Largest side an aspect within `max_aspect` can produce.
fn max_side(limits: &Limits) -> u32 {
    let area = f64::from(limits.native_width) * f64::from(limits.native_height);
    let step = f64::from(SIZE_STEP);
    ((area * limits.max_aspect).sqrt() / step).round() as u32 * SIZE_STEP
}

fn check_spec(spec: &JobSpec, limits: &Limits) {
    assert!(spec.width.is_multiple_of(SIZE_STEP) && spec.height.is_multiple_of(SIZE_STEP));
    assert!(spec.width >= SIZE_STEP && spec.height >= SIZE_STEP);
    assert!(spec.width <= max_side(limits) && spec.height <= max_side(limits));
    let ratio = f64::from(spec.aspect.0) / f64::from(spec.aspect.1);
    assert!(ratio <= limits.max_aspect && ratio.recip() <= limits.max_aspect);

    assert!((1..=limits.max_steps.max(1)).contains(&spec.steps));
    assert!((1..=spec.steps).contains(&spec.steps_to_run()));
    assert!((10..=100).contains(&spec.stop_percent));
    assert!(spec.chaos <= 100 && spec.stylize <= 1000);
    assert!((3.0..=15.0).contains(&spec.guidance));
    assert!(spec
        .image_guidances()
        .iter()
        .all(|g| *g >= 1.0 && g.is_finite()));
    assert!(QUALITIES.contains(&spec.quality));
    assert!(limits.samplers.contains(&spec.sampler));
    assert!(limits.models.contains(&spec.model));

    assert!(!spec.prompt.is_empty());
    assert!(spec.prompt.iter().map(|part| part.weight).sum::<f64>() > 0.0);
    for part in &spec.prompt {
        assert!(!part.text.is_empty());
        assert_eq!(
            part.text,
            part.text.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        assert!(part.weight.abs() <= 100.0);
    }
    assert!(spec.positive_text().chars().count() <= limits.max_prompt_chars);
    assert!(spec.negative.chars().count() <= limits.max_prompt_chars);
}

fn check(input: &str, limits: &Limits) {
    match parse(input, limits) {
        Ok(specs) => {
            assert!(!specs.is_empty());
            assert!(specs.len() <= limits.max_jobs as usize);
            for spec in &specs {
                check_spec(spec, limits);
            }
        }
        Err(error) => check_error(&error, input),
    }
}

fn check_error(error: &PromptError, input: &str) {
    let message = error.to_string();
    assert!(
        !message.is_empty() && !message.contains('\n'),
        "{message:?}"
    );
    if let Some(offset) = error.offset() {
        assert!(offset < input.chars().count(), "{offset} in {input:?}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_text_never_panics(input in any::<String>()) {
        check(&input, &Limits::default());
    }

    #[test]
    fn flag_like_text_never_panics(input in fragments(), limits in limits()) {
        check(&input, &limits);
    }

    #[test]
    fn flag_like_text_on_default_limits(input in fragments()) {
        check(&input, &Limits::default());
    }

    #[test]
    fn valid_parameters_are_kept(
        seed in any::<u32>(),
        chaos in 0u8..=100,
        stylize in 0u16..=1000,
        stop in 10u8..=100,
        repeat in 1u32..=4,
        aspect in (1u32..=4, 1u32..=4),
        dash in prop::sample::select(vec!["--", "—", "–"]),
    ) {
        let input = format!(
            "a cat {dash}seed {seed} {dash}chaos {chaos} {dash}s {stylize} {dash}stop {stop} \
             {dash}r {repeat} {dash}ar {}:{}",
            aspect.0, aspect.1
        );
        let specs = parse(&input, &Limits::default()).unwrap();
        prop_assert_eq!(specs.len(), repeat as usize);
        let first = &specs[0];
        prop_assert_eq!(first.seed, Some(seed));
        prop_assert_eq!(first.chaos, chaos);
        prop_assert_eq!(first.stylize, stylize);
        prop_assert_eq!(first.stop_percent, stop);
        let ratio = f64::from(first.aspect.0) / f64::from(first.aspect.1);
        prop_assert!((ratio - f64::from(aspect.0) / f64::from(aspect.1)).abs() < 1e-12);
        for spec in &specs {
            check_spec(spec, &Limits::default());
        }
    }

    #[test]
    fn positive_text_parses_back(
        parts in prop::collection::vec(("[a-z]{1,6}( [a-z]{1,6}){0,2}", -20i32..=20), 1..5),
    ) {
        let input: Vec<String> = parts
            .iter()
            .map(|(text, weight)| format!("{text}::{}", f64::from(*weight) / 4.0))
            .collect();
        let input = input.join(" ");
        if let Ok(specs) = parse(&input, &Limits::default()) {
            let again = parse(&specs[0].positive_text(), &Limits::default()).unwrap();
            prop_assert_eq!(&again[0].prompt, &specs[0].prompt);
        }
    }

    #[test]
    fn permutations_count_as_product(groups in prop::collection::vec(1usize..4, 0..3)) {
        let input: String = groups
            .iter()
            .enumerate()
            .map(|(group, size)| {
                let alternatives: Vec<String> =
                    (0..*size).map(|choice| format!("w{group}x{choice}")).collect();
                format!("{{{}}} ", alternatives.join(", "))
            })
            .collect();
        let input = format!("{input}cat");
        let expected: usize = groups.iter().product();
        match parse(&input, &Limits::default()) {
            Ok(specs) => prop_assert_eq!(specs.len(), expected),
            Err(error) => prop_assert_eq!(
                error,
                PromptError::TooManyJobs { jobs: expected as u64, at_least: false, max: 10 }
            ),
        }
    }
}
