//! Flamegraphs of a `perf record --call-graph` profile, as a standalone SVG.
//!
//! `perf script` prints each sample as its thread's name and its call chain, innermost frame
//! first. [`fold`] turns those into folded stacks (`thread;outer;…;inner` → samples), and
//! [`svg`] draws them the usual way: the outermost frame at the bottom, each frame as wide as
//! the share of samples it was on the stack for, callees above their caller, siblings in
//! alphabetical order (the x axis is not time). Hovering a frame shows its name, its samples
//! and its share. Kernel frames carry `_[k]` and their own colours (orange to yellow; user
//! space is red), so the part a request spends in the kernel reads at a glance.
//!
//! Written here rather than taken from a crate: the one maintained Rust implementation
//! (inferno) is CDDL-licensed, which the project's licence policy (`deny.toml`) does not allow.
use std::{collections::BTreeMap, fmt::Write as _, fs, path::Path, process::Command};

use anyhow::{Context as _, Result, bail};

/// Folded stacks: `thread;outermost;…;innermost` → samples.
pub type Folded = BTreeMap<String, u64>;

/// Width of the image and of its margins, in pixels.
const WIDTH: f64 = 1200.0;
const MARGIN: f64 = 10.0;
/// Height of one frame, and of the title above the frames.
const FRAME_HEIGHT: f64 = 16.0;
const HEADER: f64 = 46.0;
/// Frames narrower than this are left out (with their callees, narrower still).
const MIN_FRAME_WIDTH: f64 = 0.1;
/// Font size and the width a character of it takes, about.
const FONT_SIZE: f64 = 11.0;
const CHAR_WIDTH: f64 = 6.6;

/// Writes the flamegraph of the `perf record` data `data` (recorded with `--call-graph`) to
/// `svg_path`.
pub fn write(data: &Path, svg_path: &Path, title: &str) -> Result<()> {
    let out = Command::new("perf")
        // `--no-inline`: resolving inlined frames from DWARF takes minutes on a release build.
        .args(["script", "--no-inline", "-F", "comm,ip,sym,dso", "-i"])
        .arg(data)
        .stderr(std::process::Stdio::null())
        .output()
        .context("perf script")?;
    if !out.status.success() {
        bail!("perf script failed on {}", data.display());
    }
    let folded = fold(&String::from_utf8_lossy(&out.stdout));
    if folded.is_empty() {
        bail!("no samples in {}", data.display());
    }
    fs::write(svg_path, svg(title, &folded))
        .with_context(|| format!("writing {}", svg_path.display()))
}

/// The folded stacks of `perf script -F comm,ip,sym,dso` output.
pub fn fold(script: &str) -> Folded {
    let mut folded = Folded::new();
    let mut thread: Option<&str> = None;
    let mut frames: Vec<String> = Vec::new();
    // A blank line ends a sample; so does the end of the text.
    for line in script.lines().chain([""]) {
        if line.trim().is_empty() {
            if let Some(thread) = thread.take() {
                let mut stack = thread.to_owned();
                for frame in frames.drain(..).rev() {
                    stack.push(';');
                    stack.push_str(&frame);
                }
                *folded.entry(stack).or_default() += 1;
            }
        } else if line.starts_with(char::is_whitespace) {
            if thread.is_some() {
                frames.push(frame_name(line.trim()));
            }
        } else {
            thread = Some(line.trim());
            frames.clear();
        }
    }
    folded
}

/// A frame's name from `ADDRESS SYMBOL (DSO)`: the symbol, or `[dso file]` when perf has none;
/// `_[k]` marks the kernel's.
fn frame_name(line: &str) -> String {
    let rest = line.split_once(' ').map_or("", |(_, rest)| rest.trim());
    let (symbol, dso) = match rest.rfind(" (") {
        Some(at) if rest.ends_with(')') => (&rest[..at], &rest[at + 2..rest.len() - 1]),
        _ => (rest, ""),
    };
    let kernel = dso.starts_with("[kernel") || dso.ends_with(".ko");
    let file = dso.rsplit('/').next().unwrap_or(dso);
    let name = if symbol.is_empty() || symbol == "[unknown]" {
        format!("[{}]", file.trim_matches(['[', ']']))
    } else {
        symbol.to_owned()
    };
    if kernel { format!("{name}_[k]") } else { name }
}

/// A frame and the frames it called, with the samples it was on the stack for.
#[derive(Default)]
struct Frame {
    samples: u64,
    callees: BTreeMap<String, Frame>,
}

impl Frame {
    fn of(folded: &Folded) -> Frame {
        let mut root = Frame::default();
        for (stack, &samples) in folded {
            root.samples += samples;
            let mut at = &mut root;
            for name in stack.split(';') {
                at = at.callees.entry(name.to_owned()).or_default();
                at.samples += samples;
            }
        }
        root
    }

    fn depth(&self) -> usize {
        self.callees
            .values()
            .map(|c| 1 + c.depth())
            .max()
            .unwrap_or(0)
    }
}

/// The SVG flamegraph of `folded`, titled `title`.
pub fn svg(title: &str, folded: &Folded) -> String {
    let root = Frame::of(folded);
    let height = HEADER + root.depth() as f64 * FRAME_HEIGHT + MARGIN;
    let mut o = String::new();
    let _ = write!(
        o,
        r#"<?xml version="1.0" standalone="no"?>
<svg version="1.1" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" xmlns="http://www.w3.org/2000/svg" font-family="Verdana, sans-serif" font-size="{FONT_SIZE}">
<rect x="0" y="0" width="{WIDTH}" height="{height}" fill="rgb(248,248,240)"/>
<text x="{center}" y="20" font-size="15" text-anchor="middle">{title}</text>
<text x="{center}" y="36" fill="rgb(100,100,100)" text-anchor="middle">{samples} samples; width = share of samples on the stack; kernel frames orange to yellow (marked _[k]), user space red</text>
"#,
        center = WIDTH / 2.0,
        title = escape(title),
        samples = root.samples,
    );
    let per_sample = (WIDTH - 2.0 * MARGIN) / root.samples.max(1) as f64;
    let bottom = height - MARGIN - FRAME_HEIGHT;
    let mut x = MARGIN;
    for (name, frame) in &root.callees {
        draw(&mut o, name, frame, root.samples, per_sample, x, bottom);
        x += frame.samples as f64 * per_sample;
    }
    o.push_str("</svg>\n");
    o
}

/// Draws `frame` at (`x`, `y`) and its callees above it.
fn draw(o: &mut String, name: &str, frame: &Frame, total: u64, per_sample: f64, x: f64, y: f64) {
    let width = frame.samples as f64 * per_sample;
    if width < MIN_FRAME_WIDTH {
        return;
    }
    let share = 100.0 * frame.samples as f64 / total.max(1) as f64;
    let (r, g, b) = colour(name);
    let _ = write!(
        o,
        "<g><title>{name} ({samples} samples, {share:.2}%)</title>\
         <rect x=\"{x:.2}\" y=\"{y:.1}\" width=\"{width:.2}\" height=\"{h:.1}\" \
         fill=\"rgb({r},{g},{b})\" rx=\"2\"/>",
        name = escape(name),
        samples = frame.samples,
        h = FRAME_HEIGHT - 1.0,
    );
    if let Some(label) = label(name, width) {
        let _ = write!(
            o,
            "<text x=\"{:.2}\" y=\"{:.1}\">{}</text>",
            x + 3.0,
            y + FRAME_HEIGHT - 4.5,
            escape(&label)
        );
    }
    o.push_str("</g>\n");
    let mut at = x;
    for (callee, inner) in &frame.callees {
        draw(o, callee, inner, total, per_sample, at, y - FRAME_HEIGHT);
        at += inner.samples as f64 * per_sample;
    }
}

/// As much of `name` as fits in `width` pixels (cut with `..`), or none when too little does.
fn label(name: &str, width: f64) -> Option<String> {
    let fits = ((width - 6.0) / CHAR_WIDTH) as usize;
    let chars = name.chars().count();
    if fits >= chars {
        Some(name.to_owned())
    } else if fits >= 4 {
        Some(name.chars().take(fits - 2).chain("..".chars()).collect())
    } else {
        None
    }
}

/// A colour that stays the same for a name across graphs: orange to yellow for the kernel,
/// reds for the process's own code and libraries.
fn colour(name: &str) -> (u8, u8, u8) {
    // FNV-1a: stable across runs and builds, unlike the standard hasher.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let v = |shift: u32, span: u64| ((hash >> shift) % span) as u8;
    if name.ends_with("_[k]") {
        (230 + v(0, 25), 130 + v(8, 80), v(16, 40))
    } else {
        (190 + v(0, 65), 40 + v(8, 60), 40 + v(16, 40))
    }
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "mlb-proxy-0 \n\
        \tffffffff81000100 tcp_sendmsg ([kernel.kallsyms])\n\
        \t          101829 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
        \t            109b mlb::proxy::serve::<impl Foo>::run (/opt/mlb)\n\
        \n\
        mlb-proxy-0 \n\
        \t            7f00 [unknown] (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
        \t            109b mlb::proxy::serve::<impl Foo>::run (/opt/mlb)\n\
        \n\
        mlb-proxy-0 \n\
        \tffffffff81000100 tcp_sendmsg ([kernel.kallsyms])\n\
        \t          101829 __send (/usr/lib/x86_64-linux-gnu/libc.so.6)\n\
        \t            109b mlb::proxy::serve::<impl Foo>::run (/opt/mlb)\n";

    #[test]
    fn samples_fold_outermost_first_with_kernel_frames_marked() {
        let folded = fold(SCRIPT);
        let expected: Folded = [
            (
                "mlb-proxy-0;mlb::proxy::serve::<impl Foo>::run;__send;tcp_sendmsg_[k]".to_owned(),
                2,
            ),
            (
                "mlb-proxy-0;mlb::proxy::serve::<impl Foo>::run;[libc.so.6]".to_owned(),
                1,
            ),
        ]
        .into();
        assert_eq!(folded, expected);
    }

    /// The `width` of the frame whose tooltip starts with `name (`.
    fn width_of(svg: &str, name: &str) -> f64 {
        let at = svg
            .find(&format!("<title>{name} ("))
            .unwrap_or_else(|| panic!("no frame {name}"));
        let rest = &svg[at..];
        let w = &rest[rest.find("width=\"").unwrap() + 7..];
        w[..w.find('"').unwrap()].parse().unwrap()
    }

    fn y_of(svg: &str, name: &str) -> f64 {
        let at = svg.find(&format!("<title>{name} (")).unwrap();
        let rest = &svg[at..];
        let y = &rest[rest.find(" y=\"").unwrap() + 4..];
        y[..y.find('"').unwrap()].parse().unwrap()
    }

    #[test]
    fn frames_are_as_wide_as_their_samples_and_callees_sit_above_callers() {
        let folded: Folded = [
            ("proxy;serve;send".to_owned(), 3),
            ("proxy;serve;recv".to_owned(), 1),
            ("proxy;idle".to_owned(), 4),
        ]
        .into();
        let svg = svg("mlb <keep-alive>", &folded);
        let full = WIDTH - 2.0 * MARGIN;
        assert!((width_of(&svg, "proxy") - full).abs() < 0.01);
        assert!((width_of(&svg, "serve") - full / 2.0).abs() < 0.01);
        assert!((width_of(&svg, "send") - 3.0 * width_of(&svg, "recv")).abs() < 0.01);
        assert!(y_of(&svg, "send") < y_of(&svg, "serve"));
        assert!(y_of(&svg, "serve") < y_of(&svg, "proxy"));
        assert!(svg.contains("serve (4 samples, 50.00%)"));
        // The title is escaped: the SVG stays well-formed XML.
        assert!(svg.contains("mlb &lt;keep-alive&gt;"));
        assert!(!svg.contains("<keep-alive>"));
    }

    #[test]
    fn names_too_long_for_their_frame_are_cut_and_tiny_frames_left_out() {
        assert_eq!(label("tcp_sendmsg", 200.0).as_deref(), Some("tcp_sendmsg"));
        assert_eq!(label("tcp_sendmsg_locked", 50.0).as_deref(), Some("tcp_.."));
        assert_eq!(label("tcp_sendmsg", 20.0), None);
        let folded: Folded = [("a;big".to_owned(), 1_000_000), ("a;tiny".to_owned(), 1)].into();
        let svg = svg("t", &folded);
        assert!(svg.contains("<title>big ("));
        assert!(!svg.contains("<title>tiny ("));
    }

    #[test]
    fn kernel_frames_take_orange_colours() {
        let (r, g, b) = colour("tcp_sendmsg_[k]");
        assert!(r >= 230 && g >= 130 && b < 40, "{r},{g},{b}");
        let (r, g, b) = colour("mlb::proxy::serve");
        assert!(r >= 190 && g < 100 && b < 80, "{r},{g},{b}");
    }

    /// A name keeps its colour from one graph to the next (the colour comes from the name
    /// alone, not from where or when the frame is drawn).
    #[test]
    fn a_frame_has_the_same_colour_in_every_graph() {
        let fill_of = |svg: &str| {
            let at = svg.find("<title>serve (").unwrap();
            let rest = &svg[at..];
            let fill = &rest[rest.find("fill=\"").unwrap() + 6..];
            fill[..fill.find('"').unwrap()].to_owned()
        };
        let one: Folded = [("p;serve".to_owned(), 1)].into();
        let other: Folded = [("q;a".to_owned(), 5), ("q;serve".to_owned(), 2)].into();
        assert_eq!(fill_of(&svg("one", &one)), fill_of(&svg("other", &other)));
    }
}
