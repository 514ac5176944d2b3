// Benchmark placeholder: replaced by the owning work item.
fn main() {}
