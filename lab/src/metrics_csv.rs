//! A run's `metrics.csv`: one row per epoch, then a `deploy` row for the folded model (both
//! trainers write it; its columns differ by task). Read by name, never by position.

use std::path::Path;

use crate::Result;

/// The table as written: the header and the rows as text.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricsCsv {
    pub head: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// The first column of the row the trainers add after the fold.
const DEPLOY_ROW: &str = "deploy";

impl MetricsCsv {
    pub fn read(path: &Path) -> Result<Self> {
        Self::parse(&crate::read_to_string(path)?)
            .map_err(|e| crate::Error::file(path, format!("not a metrics table: {e}")))
    }

    /// Rows may differ in length (the `deploy` row of a multi-task run is shorter).
    pub fn parse(text: &str) -> Result<Self, csv::Error> {
        let mut r = csv::ReaderBuilder::new()
            .flexible(true)
            .from_reader(text.as_bytes());
        let fields = |rec: &csv::StringRecord| rec.iter().map(str::to_string).collect::<Vec<_>>();
        let head = fields(r.headers()?);
        let rows = r
            .records()
            .map(|rec| rec.map(|rec| fields(&rec)))
            .collect::<Result<_, _>>()?;
        Ok(Self { head, rows })
    }

    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.head.iter().position(|h| h == name)
    }

    fn is_deploy(r: &[String]) -> bool {
        r.first().map(String::as_str) == Some(DEPLOY_ROW)
    }

    /// The epoch rows (without the `deploy` row).
    pub fn epochs(&self) -> impl Iterator<Item = &Vec<String>> {
        self.rows.iter().filter(|r| !Self::is_deploy(r))
    }

    /// The row of the folded model, if the run got that far.
    pub fn deploy(&self) -> Option<&Vec<String>> {
        self.rows.iter().find(|r| Self::is_deploy(r))
    }

    /// `(epoch number from 1, value)` of a column over the epoch rows; cells that do not parse
    /// are left out.
    pub fn series(&self, name: &str) -> Option<Vec<(f64, f64)>> {
        let k = self.column_index(name)?;
        Some(
            self.epochs()
                .enumerate()
                .filter_map(|(i, r)| Some(((i + 1) as f64, r.get(k)?.parse::<f64>().ok()?)))
                .collect(),
        )
    }

    /// The mean of a column over every row where it parses (the `deploy` row has no
    /// throughput); 0 for none.
    pub fn mean(&self, name: &str) -> Option<f64> {
        let k = self.column_index(name)?;
        let v: Vec<f64> = self
            .rows
            .iter()
            .filter_map(|r| r.get(k)?.parse().ok())
            .collect();
        Some(v.iter().sum::<f64>() / v.len().max(1) as f64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_are_read_by_name_and_the_deploy_row_is_not_an_epoch() {
        let t = MetricsCsv::parse("epoch,loss,images_per_s\n1,2.0,100\n2,1.5,300\ndeploy,1.4,\n")
            .unwrap();
        assert_eq!(t.series("loss"), Some(vec![(1.0, 2.0), (2.0, 1.5)]));
        assert_eq!(t.series("nope"), None);
        assert_eq!(t.deploy().unwrap()[1], "1.4");
        assert_eq!(t.epochs().last().unwrap()[0], "2");
        // The deploy row's empty throughput is skipped, not read as 0.
        assert_eq!(t.mean("images_per_s"), Some(200.0));
        assert_eq!(MetricsCsv::parse("a,b\n").unwrap().mean("a"), Some(0.0));
    }
}
