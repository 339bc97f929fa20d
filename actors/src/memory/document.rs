//! The memory file as text plus an index of its sections and lessons.
//!
//! MEMORY.md is free-form Markdown that agents and humans also edit by
//! hand, so the text itself is the source of truth and is kept verbatim:
//! nothing here re-renders a file. What the memory actor needs on top of
//! the text is fast answers to "where does section S end?" and "is this
//! lesson already under S?", because it appends thousands of lessons to a
//! file that grows with them; scanning the whole file per append would
//! make a busy memory quadratic. The [`Document`] keeps a lazily built
//! index for that, updated in place by appends and dropped by any other
//! change (an edit or a whole-file replace), to be rebuilt on the next
//! append.
//!
//! Only ATX headings (`## Title`) are recognised, outside fenced code
//! blocks. A section's lesson area runs from its `##` heading to the next
//! heading of any level, so a lesson never lands under a `###`
//! sub-heading. A lesson is a bullet line (`- text`, `* text` or
//! `+ text`); its identity, used to refuse duplicates, is its text without
//! the `(date, incident N)` suffix hale renders.

use std::collections::{HashMap, HashSet};

use jiff::civil::Date;

/// One lesson to record under a `## section` heading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lesson {
    /// The section heading's title, without the `## `.
    pub section: String,
    /// The lesson, one line.
    pub text: String,
    /// The day it was learnt, rendered after the text.
    pub date: Option<Date>,
    /// The audit event that taught it, rendered as `incident N`.
    pub incident: Option<u64>,
}

/// Why a lesson cannot be recorded; each names the field at fault.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LessonError {
    /// The section title is empty or blank.
    #[error("`section` is empty; name the `## Section` heading the lesson goes under")]
    EmptySection,
    /// The lesson text is empty or blank.
    #[error("`lesson` is empty; give the lesson as one line of text")]
    EmptyText,
    /// A field spans several lines.
    #[error("`{0}` must be a single line (it contains a line break)")]
    Multiline(&'static str),
    /// The section title would not read back as the same `##` heading
    /// (it starts or ends with `#`).
    #[error(
        "`section` `{0}` cannot be a heading title: it must not start or end with `#`; \
         give the title alone, without the `## `"
    )]
    NotATitle(String),
}

impl Lesson {
    /// A lesson under `section` with no date and no incident. Surrounding
    /// whitespace of both is dropped.
    pub fn new(section: impl Into<String>, text: impl Into<String>) -> Self {
        Self {
            section: section.into().trim().to_owned(),
            text: text.into().trim().to_owned(),
            date: None,
            incident: None,
        }
    }

    /// Adds the day it was learnt.
    pub fn with_date(mut self, date: Date) -> Self {
        self.date = Some(date);
        self
    }

    /// Adds the audit event id of the incident that taught it.
    pub fn with_incident(mut self, incident: u64) -> Self {
        self.incident = Some(incident);
        self
    }

    /// The bullet line as written to the file, without the newline:
    /// `- text (2026-11-27, incident 42)`.
    pub fn line(&self) -> String {
        let mut line = format!("- {}", self.text);
        match (self.date, self.incident) {
            (Some(date), Some(incident)) => {
                line.push_str(&format!(" ({date}, incident {incident})"))
            }
            (Some(date), None) => line.push_str(&format!(" ({date})")),
            (None, Some(incident)) => line.push_str(&format!(" (incident {incident})")),
            (None, None) => {}
        }
        line
    }

    /// Checks that the lesson can be written and read back as itself.
    ///
    /// # Errors
    /// The first field at fault.
    pub fn validate(&self) -> Result<(), LessonError> {
        if self.section.trim().is_empty() {
            return Err(LessonError::EmptySection);
        }
        if self.text.trim().is_empty() {
            return Err(LessonError::EmptyText);
        }
        if self.section.contains(['\n', '\r']) {
            return Err(LessonError::Multiline("section"));
        }
        if self.text.contains(['\n', '\r']) {
            return Err(LessonError::Multiline("lesson"));
        }
        // The heading must come back as the same title, or every append
        // would miss the section it created and create another.
        let heading = format!("## {}", self.section);
        match atx_heading(&heading) {
            Some((2, title)) if title == self.section => Ok(()),
            _ => Err(LessonError::NotATitle(self.section.clone())),
        }
    }
}

/// What the last non-blank line of a section's lesson area is; it decides
/// whether a new bullet needs a blank line before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineKind {
    Heading,
    Bullet,
    Other,
}

#[derive(Debug, Clone)]
struct Section {
    /// The byte offset just past the area's last non-blank line: where a
    /// new lesson goes.
    insert_at: usize,
    last: LineKind,
    /// The identities of the lessons already in the area.
    lessons: HashSet<String>,
}

#[derive(Debug, Clone, Default)]
struct Index {
    /// In document order, so an insertion shifts exactly the later ones.
    sections: Vec<Section>,
    /// The first section of each title.
    by_title: HashMap<String, usize>,
    /// The fence that is still open at the end of the text, if any.
    open_fence: Option<String>,
}

/// The memory file's text with its section index.
#[derive(Debug, Clone, Default)]
pub struct Document {
    text: String,
    index: Option<Index>,
}

/// What an edit found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EditResult {
    /// `old_text` occurred once and was replaced.
    Replaced,
    /// `old_text` does not occur.
    NotFound,
    /// `old_text` occurs this many times (more than once); nothing changed.
    Ambiguous(usize),
}

impl Document {
    /// A document holding `text`.
    pub fn new(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            index: None,
        }
    }

    /// The whole text.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Records `lesson` at the end of its section's lesson area, creating
    /// the section at the end of the document when it is missing. Returns
    /// `false`, changing nothing, when a lesson with the same text is
    /// already in that section.
    ///
    /// # Errors
    /// [`LessonError`] when the lesson is invalid.
    pub fn append(&mut self, lesson: &Lesson) -> Result<bool, LessonError> {
        lesson.validate()?;
        let line = lesson.line();
        // The identity is read back from the line exactly as a rebuilt
        // index would read it, so a lesson whose own text ends in
        // something like `(2026-01-01)` is still recognised after a
        // restart.
        let key = bullet_key(&line).unwrap_or(&lesson.text).to_owned();
        let text = &mut self.text;
        let index = self.index.get_or_insert_with(|| Index::build(text));
        if let Some(&at) = index.by_title.get(&lesson.section) {
            let section = &mut index.sections[at];
            if section.lessons.contains(&key) {
                return Ok(false);
            }
            let offset = section.insert_at;
            let mut insert = String::new();
            if offset > 0 && !text[..offset].ends_with('\n') {
                insert.push('\n');
            }
            if section.last != LineKind::Bullet {
                insert.push('\n');
            }
            insert.push_str(&line);
            insert.push('\n');
            text.insert_str(offset, &insert);
            section.insert_at += insert.len();
            section.last = LineKind::Bullet;
            section.lessons.insert(key);
            for later in &mut index.sections[at + 1..] {
                later.insert_at += insert.len();
            }
            return Ok(true);
        }
        let mut insert = String::new();
        if !text.is_empty() && !text.ends_with('\n') {
            insert.push('\n');
        }
        if let Some(fence) = index.open_fence.take() {
            // A heading inside an unclosed code block would be code.
            insert.push_str(&fence);
            insert.push('\n');
        }
        let so_far = format!("{text}{insert}");
        if !so_far.is_empty() && !so_far.ends_with("\n\n") {
            insert.push('\n');
        }
        insert.push_str(&format!("## {}\n\n{line}\n", lesson.section));
        text.push_str(&insert);
        index
            .by_title
            .insert(lesson.section.clone(), index.sections.len());
        index.sections.push(Section {
            insert_at: text.len(),
            last: LineKind::Bullet,
            lessons: HashSet::from([key]),
        });
        Ok(true)
    }

    /// Replaces the one occurrence of `old_text` with `new_text`; see
    /// [`EditResult`]. Occurrences may overlap, as for `edit_file`.
    pub fn edit(&mut self, old_text: &str, new_text: &str) -> EditResult {
        match crate::builtin::files::count_matches(&self.text, old_text) {
            0 => EditResult::NotFound,
            1 => {
                self.text = self.text.replacen(old_text, new_text, 1);
                self.index = None;
                EditResult::Replaced
            }
            n => EditResult::Ambiguous(n),
        }
    }

    /// Replaces the whole text.
    pub fn replace(&mut self, text: impl Into<String>) {
        self.text = text.into();
        self.index = None;
    }

    /// The lesson texts under `section` (its first occurrence), in file
    /// order; empty when there is no such section.
    pub fn lessons(&self, section: &str) -> Vec<String> {
        let mut found = Vec::new();
        let mut inside = false;
        let mut seen_section = false;
        for line in Lines::new(&self.text) {
            match line.kind {
                Kind::Heading(level, title) => {
                    if inside {
                        break;
                    }
                    inside = level == 2 && title == section && !seen_section;
                    seen_section |= inside;
                }
                Kind::Text if inside => {
                    if let Some(key) = bullet_key(line.text) {
                        found.push(key.to_owned());
                    }
                }
                _ => {}
            }
        }
        found
    }
}

impl Index {
    fn build(text: &str) -> Self {
        let mut index = Index::default();
        let mut current: Option<usize> = None;
        let mut lines = Lines::new(text);
        for line in lines.by_ref() {
            match line.kind {
                Kind::Heading(level, title) => {
                    current = None;
                    if level == 2 {
                        let at = index.sections.len();
                        index.sections.push(Section {
                            insert_at: line.end,
                            last: LineKind::Heading,
                            lessons: HashSet::new(),
                        });
                        if !index.by_title.contains_key(title) {
                            index.by_title.insert(title.to_owned(), at);
                            current = Some(at);
                        }
                    }
                }
                Kind::Blank => {}
                Kind::Text | Kind::Code => {
                    if let Some(at) = current {
                        let section = &mut index.sections[at];
                        section.insert_at = line.end;
                        match (line.kind, bullet_key(line.text)) {
                            (Kind::Text, Some(key)) => {
                                section.last = LineKind::Bullet;
                                section.lessons.insert(key.to_owned());
                            }
                            _ => section.last = LineKind::Other,
                        }
                    }
                }
            }
        }
        index.open_fence = lines.fence.map(|(ch, len)| ch.to_string().repeat(len));
        index
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind<'a> {
    Blank,
    /// An ATX heading outside code: level and title.
    Heading(usize, &'a str),
    /// A line inside (or opening, or closing) a fenced code block.
    Code,
    Text,
}

struct Line<'a> {
    text: &'a str,
    /// The offset just past the line and its newline.
    end: usize,
    kind: Kind<'a>,
}

/// The lines of a text with their offsets and kinds, tracking fenced code
/// blocks so that a `## ` inside one is not taken for a heading.
struct Lines<'a> {
    rest: &'a str,
    offset: usize,
    /// The open fence's character and length.
    fence: Option<(char, usize)>,
}

impl<'a> Lines<'a> {
    fn new(text: &'a str) -> Self {
        Self {
            rest: text,
            offset: 0,
            fence: None,
        }
    }
}

impl<'a> Iterator for Lines<'a> {
    type Item = Line<'a>;

    fn next(&mut self) -> Option<Line<'a>> {
        if self.rest.is_empty() {
            return None;
        }
        let len = self.rest.find('\n').map_or(self.rest.len(), |i| i + 1);
        let (raw, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.offset += len;
        let text = raw.trim_end_matches(['\n', '\r']);
        let kind = if let Some((ch, open)) = self.fence {
            if fence_marker(text)
                .is_some_and(|(c, n, info)| c == ch && n >= open && info.is_empty())
            {
                self.fence = None;
            }
            Kind::Code
        } else if let Some((ch, n, _)) = fence_marker(text) {
            self.fence = Some((ch, n));
            Kind::Code
        } else if text.trim().is_empty() {
            Kind::Blank
        } else if let Some((level, title)) = atx_heading(text) {
            Kind::Heading(level, title)
        } else {
            Kind::Text
        };
        Some(Line {
            text,
            end: self.offset,
            kind,
        })
    }
}

/// `line` without up to three leading spaces, or `None` when it is
/// indented further (an indented code block, or a continuation).
fn strip_indent(line: &str) -> Option<&str> {
    let spaces = line.len() - line.trim_start_matches(' ').len();
    (spaces <= 3).then(|| &line[spaces..])
}

/// A code fence (```` ``` ```` or `~~~`, three or more): its character,
/// length and info string.
fn fence_marker(line: &str) -> Option<(char, usize, &str)> {
    let body = strip_indent(line)?;
    let ch = body.chars().next().filter(|c| *c == '`' || *c == '~')?;
    let len = body.len() - body.trim_start_matches(ch).len();
    (len >= 3).then(|| (ch, len, body[len..].trim()))
}

/// An ATX heading's level and title (closing `#`s removed).
fn atx_heading(line: &str) -> Option<(usize, &str)> {
    let body = strip_indent(line)?;
    let level = body.len() - body.trim_start_matches('#').len();
    if !(1..=6).contains(&level) {
        return None;
    }
    let rest = &body[level..];
    if !(rest.is_empty() || rest.starts_with([' ', '\t'])) {
        return None;
    }
    let mut title = rest.trim();
    // A closing sequence is `#`s preceded by a space (or the whole title).
    let without = title.trim_end_matches('#');
    if without.is_empty() {
        title = "";
    } else if without.len() < title.len() && without.ends_with([' ', '\t']) {
        title = without.trim_end();
    }
    Some((level, title))
}

/// A bullet line's lesson identity: its text without the rendered
/// `(date)`, `(incident N)` or `(date, incident N)` suffix.
fn bullet_key(line: &str) -> Option<&str> {
    let body = strip_indent(line)?;
    let text = body
        .strip_prefix("- ")
        .or_else(|| body.strip_prefix("* "))
        .or_else(|| body.strip_prefix("+ "))?
        .trim();
    if let Some(open) = text.rfind(" (")
        && let Some(meta) = text[open + 2..].strip_suffix(')')
        && is_meta(meta)
    {
        return Some(text[..open].trim_end());
    }
    Some(text)
}

fn is_meta(meta: &str) -> bool {
    let incident = |s: &str| {
        s.strip_prefix("incident ")
            .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    };
    let date = |s: &str| s.parse::<Date>().is_ok();
    match meta.split_once(", ") {
        Some((d, i)) => date(d) && incident(i),
        None => date(meta) || incident(meta),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn lesson(section: &str, text: &str) -> Lesson {
        Lesson::new(section, text)
    }

    #[test]
    fn renders_date_and_incident() {
        let date: Date = "2026-11-27".parse().unwrap();
        let l = lesson("Tools", "retry grep")
            .with_date(date)
            .with_incident(42);
        assert_eq!(l.line(), "- retry grep (2026-11-27, incident 42)");
        assert_eq!(bullet_key(&l.line()), Some("retry grep"));
        assert_eq!(lesson("T", "x").with_incident(7).line(), "- x (incident 7)");
        assert_eq!(bullet_key("- x (incident 7)"), Some("x"));
        assert_eq!(bullet_key("- x (see docs)"), Some("x (see docs)"));
    }

    #[test]
    fn appends_create_sections_and_dedupe() {
        let mut doc = Document::new("# Memory\n\nIntro.\n");
        assert!(doc.append(&lesson("A", "one")).unwrap());
        assert!(doc.append(&lesson("B", "two")).unwrap());
        assert!(doc.append(&lesson("A", "three")).unwrap());
        assert!(!doc.append(&lesson("A", "one")).unwrap());
        assert!(doc.append(&lesson("B", "one")).unwrap());
        assert_eq!(
            doc.text(),
            "# Memory\n\nIntro.\n\n## A\n\n- one\n- three\n\n## B\n\n- two\n- one\n"
        );
        // A fresh index reads the same lessons back.
        let mut again = Document::new(doc.text());
        assert!(!again.append(&lesson("B", "two")).unwrap());
        assert_eq!(again.lessons("A"), ["one", "three"]);
    }

    #[test]
    fn appends_after_the_last_line_of_the_area_and_before_subsections() {
        let mut doc = Document::new("## A\nsome words\n\n### Sub\n- s\n## B");
        assert!(doc.append(&lesson("A", "x")).unwrap());
        assert!(doc.append(&lesson("B", "y")).unwrap());
        assert_eq!(
            doc.text(),
            "## A\nsome words\n\n- x\n\n### Sub\n- s\n## B\n\n- y\n"
        );
    }

    #[test]
    fn headings_in_code_blocks_are_code() {
        let mut doc = Document::new("## A\n```\n## B\n- b\n```\n");
        assert!(doc.append(&lesson("B", "b")).unwrap());
        assert_eq!(doc.text(), "## A\n```\n## B\n- b\n```\n\n## B\n\n- b\n");
        let mut open = Document::new("```md\n## A\n");
        assert!(open.append(&lesson("A", "a")).unwrap());
        assert_eq!(open.text(), "```md\n## A\n```\n\n## A\n\n- a\n");
    }

    #[test]
    fn closing_hashes_and_invalid_titles() {
        let mut doc = Document::new("## A ##\n");
        assert!(doc.append(&lesson("A", "a")).unwrap());
        assert_eq!(doc.text(), "## A ##\n\n- a\n");
        assert_eq!(
            lesson("A #", "x").validate(),
            Err(LessonError::NotATitle("A #".into()))
        );
        assert_eq!(lesson("", "x").validate(), Err(LessonError::EmptySection));
        assert_eq!(lesson("A", " ").validate(), Err(LessonError::EmptyText));
        assert_eq!(
            Lesson {
                text: "a\nb".into(),
                ..lesson("A", "")
            }
            .validate(),
            Err(LessonError::Multiline("lesson"))
        );
    }

    #[test]
    fn edits_invalidate_the_index() {
        let mut doc = Document::new("## A\n\n- one\n");
        assert_eq!(doc.edit("- one\n", ""), EditResult::Replaced);
        assert!(doc.append(&lesson("A", "one")).unwrap());
        assert_eq!(doc.text(), "## A\n\n- one\n\n");
        assert_eq!(doc.edit("zzz", "y"), EditResult::NotFound);
        assert!(doc.append(&lesson("A", "done")).unwrap());
        assert_eq!(doc.edit("one", "1"), EditResult::Ambiguous(2));
        doc.replace("## A\n\n- done\n");
        assert!(doc.append(&lesson("A", "one")).unwrap());
        assert_eq!(doc.lessons("A"), ["done", "one"]);
    }
}
