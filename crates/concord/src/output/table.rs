//! A text table with `+---+` borders, as etcdctl's `-w table` draws it.
//!
//! It exists so that `-w table` output looks like etcdctl's (which uses Go's
//! `tablewriter`) without another dependency: a border line, the upper-cased
//! header centred in its column, another border, one line per row, and a
//! closing border. Widths count characters, so non-ASCII text keeps the
//! columns aligned as long as each character takes one cell.

/// How cell text sits in its column (headers are always centred).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Align {
    /// Text starts at the left edge (etcdctl's choice for free text such as keys).
    Left,
    /// Text ends at the right edge (etcdctl's choice for most of its tables).
    Right,
}

/// A table being built: a header and rows of cells, rendered by [`Table::render`].
#[derive(Clone, Debug)]
pub struct Table {
    header: Vec<String>,
    rows: Vec<Vec<String>>,
    align: Align,
}

impl Table {
    /// A table with these column names (shown upper-cased, as etcdctl does).
    pub fn new<S: AsRef<str>>(header: &[S], align: Align) -> Table {
        Table {
            header: header.iter().map(|h| h.as_ref().to_uppercase()).collect(),
            rows: Vec::new(),
            align,
        }
    }

    /// Adds a row; missing cells are blank and extra cells are dropped, so a
    /// row never breaks the table's shape.
    pub fn row<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) -> &mut Table {
        let mut row: Vec<String> = cells
            .into_iter()
            .map(|c| cell_text(&c.into()))
            .take(self.header.len())
            .collect();
        row.resize(self.header.len(), String::new());
        self.rows.push(row);
        self
    }

    /// The whole table, each line ending in a newline.
    pub fn render(&self) -> String {
        let widths: Vec<usize> = (0..self.header.len())
            .map(|i| {
                self.rows
                    .iter()
                    .map(|r| width(&r[i]))
                    .chain(std::iter::once(width(&self.header[i])))
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let border = format!(
            "+{}+\n",
            widths.iter().map(|w| "-".repeat(w + 2)).collect::<Vec<_>>().join("+")
        );
        let line = |cells: &[String], place: &dyn Fn(&str, usize) -> String| {
            let cells: Vec<String> = cells
                .iter()
                .zip(&widths)
                .map(|(c, &w)| format!(" {} ", place(c, w)))
                .collect();
            format!("|{}|\n", cells.join("|"))
        };
        let mut out = border.clone();
        out.push_str(&line(&self.header, &centre));
        out.push_str(&border);
        let align = self.align;
        for row in &self.rows {
            out.push_str(&line(row, &|c, w| match align {
                Align::Left => format!("{c}{}", " ".repeat(w - width(c))),
                Align::Right => format!("{}{c}", " ".repeat(w - width(c))),
            }));
        }
        out.push_str(&border);
        out
    }
}

/// The cells of a table row must stay on one line: line breaks and tabs are shown escaped.
fn cell_text(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('\r', "\\r")
        .replace('\t', "\\t")
}

fn width(text: &str) -> usize {
    text.chars().count()
}

/// `text` centred in `w` columns; an odd gap leaves the extra space on the right, as tablewriter does.
fn centre(text: &str, w: usize) -> String {
    let gap = w - width(text);
    format!("{}{text}{}", " ".repeat(gap / 2), " ".repeat(gap - gap / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_like_etcdctl() {
        let mut t = Table::new(&["id", "status", "is learner"], Align::Right);
        t.row(["8e9e05c52164694d", "started", "false"]);
        t.row(["ab", "unstarted", "true"]);
        assert_eq!(
            t.render(),
            "+------------------+-----------+------------+\n\
             |        ID        |  STATUS   | IS LEARNER |\n\
             +------------------+-----------+------------+\n\
             | 8e9e05c52164694d |   started |      false |\n\
             |               ab | unstarted |       true |\n\
             +------------------+-----------+------------+\n"
        );
    }

    #[test]
    fn left_alignment_and_wide_headers() {
        let mut t = Table::new(&["key", "v"], Align::Left);
        t.row(["a", "longer value"]);
        assert_eq!(
            t.render(),
            "+-----+--------------+\n\
             | KEY |      V       |\n\
             +-----+--------------+\n\
             | a   | longer value |\n\
             +-----+--------------+\n"
        );
    }

    #[test]
    fn empty_tables_keep_their_header_and_rows_keep_their_shape() {
        let t = Table::new(&["id"], Align::Right);
        assert_eq!(t.render(), "+----+\n| ID |\n+----+\n+----+\n");
        let mut t = Table::new(&["a", "b"], Align::Right);
        t.row(["1"]);
        t.row(["1", "2", "3"]);
        let text = t.render();
        assert!(text.lines().all(|l| l.chars().count() == 9), "{text}");
        assert!(text.contains("| 1 |   |\n") && text.contains("| 1 | 2 |\n"), "{text}");
    }

    #[test]
    fn cells_stay_on_one_line_and_count_characters() {
        let mut t = Table::new(&["k"], Align::Left);
        t.row(["a\nb"]);
        t.row(["é"]);
        let text = t.render();
        assert!(text.contains("| a\\nb |\n"), "{text}");
        assert!(text.contains("| é    |\n"), "{text}");
    }
}
