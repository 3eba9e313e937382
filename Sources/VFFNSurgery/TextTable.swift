/// Columns as wide as their widest cell, so no number is ever cut; the last column is not
/// padded, so no line ends in spaces. Every table the tool prints goes through here.
public func textTable(_ header: [String], _ rows: [[String]], indent: String = "  ") -> String {
    let all = [header] + rows
    let widths = header.indices.map { c in all.map { $0[c].count }.max() ?? 0 }
    var out = ""
    for (i, r) in all.enumerated() {
        let cells = r.enumerated().map { $0 == r.count - 1 ? $1 : $1.padding(toLength: widths[$0], withPad: " ", startingAt: 0) }
        out += indent + cells.joined(separator: "  ") + "\n"
        if i == 0 { out += indent + widths.map { String(repeating: "-", count: $0) }.joined(separator: "  ") + "\n" }
    }
    return out
}
