use redb::{Database, Durability, TableDefinition, ReadableDatabase};
use std::time::Instant;
const T: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t");
const T2: TableDefinition<&[u8], &[u8]> = TableDefinition::new("t2");
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let db = Database::create(dir.path().join("x.redb")).unwrap();
    let n = 20000;
    let t = Instant::now();
    for _ in 0..n { let mut tx = db.begin_write().unwrap(); tx.set_durability(Durability::None).unwrap(); tx.commit().unwrap(); }
    println!("empty nondurable commit: {:?}", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..n { let mut tx = db.begin_write().unwrap(); tx.set_durability(Durability::None).unwrap(); { tx.open_table(T).unwrap(); tx.open_table(T2).unwrap(); } tx.commit().unwrap(); }
    println!("open 2 tables nondurable commit: {:?}", t.elapsed() / n);
    let t = Instant::now();
    for i in 0..n { let mut tx = db.begin_write().unwrap(); tx.set_durability(Durability::None).unwrap(); { let mut a = tx.open_table(T).unwrap(); a.insert(format!("key/{:08}", i % 10000).as_bytes(), &[7u8; 256][..]).unwrap(); } tx.commit().unwrap(); }
    println!("1 insert nondurable commit: {:?}", t.elapsed() / n);
    let t = Instant::now();
    for i in 0..n { let mut tx = db.begin_write().unwrap(); tx.set_durability(Durability::None).unwrap(); { let mut a = tx.open_table(T).unwrap(); a.insert(format!("key/{:08}", i % 10000).as_bytes(), &[7u8; 256][..]).unwrap(); let mut b = tx.open_table(T2).unwrap(); b.insert(format!("key/{:08}", i % 10000).as_bytes(), &[7u8; 256][..]).unwrap(); } tx.commit().unwrap(); }
    println!("2 inserts 2 tables nondurable commit: {:?}", t.elapsed() / n);
    let t = Instant::now();
    for _ in 0..200 { let tx = db.begin_write().unwrap(); tx.commit().unwrap(); }
    println!("durable empty commit: {:?}", t.elapsed() / 200);
    let t = Instant::now();
    for _ in 0..n { let tx = db.begin_read().unwrap(); let _t = tx.open_table(T).unwrap(); }
    println!("begin_read + open: {:?}", t.elapsed() / n);
}
