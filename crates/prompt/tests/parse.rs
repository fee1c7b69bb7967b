//! Prompts that parse: every flag, alias, dash form, multi-prompts, permutations and repeat.

use huaxian_prompt::{parse, stylize_guidance, JobSpec, Limits, PromptPart};

fn one(input: &str) -> JobSpec {
    let mut specs = parse(input, &Limits::default()).unwrap();
    assert_eq!(specs.len(), 1, "{input}");
    specs.remove(0)
}

fn texts(specs: &[JobSpec]) -> Vec<String> {
    specs.iter().map(JobSpec::positive_text).collect()
}

fn part(text: &str, weight: f64) -> PromptPart {
    PromptPart {
        text: text.to_string(),
        weight,
    }
}

fn limits_768() -> Limits {
    Limits {
        native_width: 768,
        native_height: 768,
        ..Limits::default()
    }
}

#[test]
fn defaults() {
    let spec = one("  a   red\tcar ");
    assert_eq!(spec.prompt, [part("a red car", 1.0)]);
    assert_eq!(spec.negative, "");
    assert_eq!((spec.width, spec.height), (512, 512));
    assert_eq!(spec.aspect, (1, 1));
    assert_eq!(spec.seed, None);
    assert_eq!(spec.steps, 30);
    assert_eq!(spec.stop_percent, 100);
    assert_eq!(spec.guidance, 7.0);
    assert_eq!(spec.stylize, 100);
    assert_eq!(spec.chaos, 0);
    assert_eq!(spec.quality, 1.0);
    assert_eq!(spec.sampler, "euler_a");
    assert_eq!(spec.model, "sd15");
    assert_eq!(spec.raw, "a red car");
    assert_eq!(spec.steps_to_run(), 30);
    assert_eq!(spec.image_guidances(), [7.0; 4]);
}

#[test]
fn aspect_ratio_sets_size() {
    let spec = one("a car --ar 16:9");
    assert_eq!(spec.aspect, (16, 9));
    assert_eq!((spec.width, spec.height), (704, 384));
    let spec = one("a car --aspect 2:3");
    assert_eq!((spec.width, spec.height), (448, 640));
    let spec = one("a car --ar 64:36");
    assert_eq!(spec.aspect, (16, 9));

    let specs = parse("a car --ar 16:9", &limits_768()).unwrap();
    assert_eq!((specs[0].width, specs[0].height), (1024, 576));
}

#[test]
fn seed() {
    assert_eq!(one("a --seed 0").seed, Some(0));
    assert_eq!(one("a --seed 4294967295").seed, Some(u32::MAX));

    let mut spec = one("a");
    assert_eq!(spec.fill_seed(77), 77);
    assert_eq!(spec.seed, Some(77));
    let mut spec = one("a --seed 5");
    assert_eq!(spec.fill_seed(77), 5);
}

#[test]
fn negative_prompt_accumulates() {
    let spec = one("a cat --no text, watermark --no  blurry  photo , text --seed 1");
    assert_eq!(spec.negative, "text, watermark, blurry photo");
    let spec = one("a cat --negative low   quality --no text");
    assert_eq!(spec.negative, "low quality, text");
    let spec = one("a cat --no dogs --negative ugly");
    assert_eq!(spec.negative, "ugly, dogs");
}

#[test]
fn chaos_spreads_guidance() {
    let spec = one("a --chaos 100");
    assert_eq!(spec.chaos, 100);
    assert_eq!(spec.image_guidances(), [7.0, 10.5, 3.5, 8.75]);
    assert_eq!(one("a --c 40").chaos, 40);
}

#[test]
fn stylize_sets_guidance() {
    assert_eq!(one("a --stylize 0").guidance, 3.0);
    assert_eq!(one("a --s 1000").guidance, 15.0);
    let spec = one("a --s 250");
    assert_eq!(spec.stylize, 250);
    assert_eq!(spec.guidance, stylize_guidance(250));
}

#[test]
fn quality_sets_steps() {
    let cases = [
        (".25", 8, 0.25),
        ("0.5", 15, 0.5),
        ("1", 30, 1.0),
        ("2", 60, 2.0),
    ];
    for (value, steps, quality) in cases {
        let spec = one(&format!("a --quality {value}"));
        assert_eq!((spec.steps, spec.quality), (steps, quality), "{value}");
    }
    assert_eq!(one("a --q .5").steps, 15);

    let capped = Limits {
        max_steps: 50,
        ..Limits::default()
    };
    assert_eq!(parse("a --q 2", &capped).unwrap()[0].steps, 50);
}

#[test]
fn steps_stop_sampler_model() {
    let spec = one("a --steps 20 --stop 55 --sampler DPMPP-2M-Karras --model SD15");
    assert_eq!(spec.steps, 20);
    assert_eq!(spec.stop_percent, 55);
    assert_eq!(spec.steps_to_run(), 11);
    assert_eq!(spec.sampler, "dpmpp_2m_karras");
    assert_eq!(spec.model, "sd15");
    assert_eq!(one("a --steps 150").steps, 150);
    assert_eq!(one("a --stop 10").steps_to_run(), 3);
}

#[test]
fn flags_ignore_case_and_accept_phone_dashes() {
    let spec = one("a car —ar 16:9 –SEED 3 --No Text \u{2014}S 0");
    assert_eq!(spec.aspect, (16, 9));
    assert_eq!(spec.seed, Some(3));
    assert_eq!(spec.negative, "Text");
    assert_eq!(spec.stylize, 0);
    assert_eq!(spec.prompt, [part("a car", 1.0)]);
}

#[test]
fn dashes_without_a_name_are_prompt_text() {
    assert_eq!(
        one("rock -- roll — yes --5").prompt,
        [part("rock -- roll — yes --5", 1.0)]
    );
}

#[test]
fn multi_prompt_weights() {
    let spec = one("text::2 other text::0.5 --ar 3:2");
    assert_eq!(spec.prompt, [part("text", 2.0), part("other text", 0.5)]);
    assert_eq!(spec.positive_text(), "text::2 other text::0.5");
    let spec = one("hot dog::1.5 food::-0.5 tail");
    assert_eq!(
        spec.prompt,
        [part("hot dog", 1.5), part("food", -0.5), part("tail", 1.0)]
    );
    assert_eq!(spec.positive_text(), "hot dog::1.5 food::-0.5 tail");
}

#[test]
fn permutations_make_one_job_each() {
    let specs = parse("a {red, blue} car", &Limits::default()).unwrap();
    assert_eq!(texts(&specs), ["a red car", "a blue car"]);
    assert_eq!(specs[1].raw, "a blue car");

    let specs = parse("{big {red, green}, small} {car, bus}", &Limits::default()).unwrap();
    assert_eq!(
        texts(&specs),
        [
            "big red car",
            "big red bus",
            "big green car",
            "big green bus",
            "small car",
            "small bus"
        ]
    );
}

#[test]
fn permutations_may_hold_parameters() {
    let specs = parse("a car --ar {1:1, 16:9} --seed 9", &Limits::default()).unwrap();
    let sizes: Vec<(u32, u32)> = specs.iter().map(|s| (s.width, s.height)).collect();
    assert_eq!(sizes, [(512, 512), (704, 384)]);
    assert!(specs.iter().all(|spec| spec.seed == Some(9)));
    assert_eq!(specs[1].raw, "a car --ar 16:9 --seed 9");

    let specs = parse("a car {--chaos 10, --s 50}", &Limits::default()).unwrap();
    assert_eq!((specs[0].chaos, specs[0].stylize), (10, 100));
    assert_eq!((specs[1].chaos, specs[1].stylize), (0, 50));

    let specs = parse("a::{1, 3} b", &Limits::default()).unwrap();
    assert_eq!(specs[1].prompt, [part("a", 3.0), part("b", 1.0)]);
}

#[test]
fn escaped_braces_are_text() {
    let spec = one(r"json \{key\} {value}");
    assert_eq!(spec.positive_text(), "json {key} value");
}

#[test]
fn repeat_makes_jobs() {
    let specs = parse("a cat --repeat 3", &Limits::default()).unwrap();
    assert_eq!(specs.len(), 3);
    assert!(specs.iter().all(|spec| spec.seed.is_none()));

    let specs = parse("a cat --r 3 --seed 4294967294", &Limits::default()).unwrap();
    let seeds: Vec<Option<u32>> = specs.iter().map(|spec| spec.seed).collect();
    assert_eq!(seeds, [Some(4294967294), Some(2), Some(6)]);
}

#[test]
fn repeat_times_permutations() {
    let specs = parse("{a, b} --r 2 --seed 10", &Limits::default()).unwrap();
    let jobs: Vec<(String, Option<u32>)> = specs
        .iter()
        .map(|spec| (spec.positive_text(), spec.seed))
        .collect();
    let expected = [("a", 10), ("a", 14), ("b", 10), ("b", 14)]
        .map(|(text, seed)| (text.to_string(), Some(seed)));
    assert_eq!(jobs, expected);

    let specs = parse("{a --r 4, b --r 2, c}", &Limits::default()).unwrap();
    assert_eq!(specs.len(), 7);
}

#[test]
fn job_cap_allows_exactly_max() {
    let specs = parse("{a,b,c,d,e} --r 2", &Limits::default()).unwrap();
    assert_eq!(specs.len(), 10);
}

#[test]
fn spec_round_trips_through_json() {
    let spec = one("a::2 b --ar 16:9 --seed 3 --no x --chaos 5 --q .5");
    let json = serde_json::to_string(&spec).unwrap();
    let back: JobSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
    assert!(json.contains(r#""aspect":[16,9]"#), "{json}");
    assert!(json.contains(r#""seed":3"#), "{json}");
}

#[test]
fn limits_deserialize_with_defaults() {
    let limits: Limits = serde_json::from_str(r#"{"native_width": 768}"#).unwrap();
    assert_eq!(limits.native_width, 768);
    assert_eq!(limits.native_height, 512);
    assert_eq!(limits.samplers.len(), 9);
}

#[test]
fn expand_is_a_switch_when_the_server_has_an_expander() {
    let limits = Limits {
        expansion: true,
        ..Limits::default()
    };
    let parsed = |input: &str| parse(input, &limits).unwrap().remove(0);
    assert_eq!(parsed("a cat --expand").expand, Some(true));
    assert_eq!(parsed("a cat --expand --ar 16:9").expand, Some(true));
    assert_eq!(parsed("a cat --ar 16:9 —expand").expand, Some(true));
    assert_eq!(parsed("a cat --expand off").expand, Some(false));
    assert_eq!(parsed("a cat --expand ON --seed 3").expand, Some(true));
    assert_eq!(
        parsed("a cat").expand,
        None,
        "absent: the user's default applies"
    );
    assert_eq!(parsed("a cat --expand").positive_text(), "a cat");
}

#[test]
fn a_plain_spec_has_the_defaults_of_a_parsed_one() {
    let parsed = one("a  red   lighthouse");
    let plain = JobSpec::new("a  red   lighthouse", &Limits::default().default_model);
    assert_eq!(plain, parsed);
}
