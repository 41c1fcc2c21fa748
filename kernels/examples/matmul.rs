//! Products per second for one quantized matrix against `n` activation rows (n = 1 is a
//! decode step, n > 1 a prefill batch), on the threads `CANDLE_NUM_THREADS` gives the pool:
//! `CANDLE_NUM_THREADS=1 cargo run --release -p rapid-kernels --example matmul [format rows cols n]`,
//! format one of q4_0 q4_1 q5_0 q8_0 q4_k q6_k. For checking kernel speed and scaling.
use rapid_kernels::kquants::{KFormat, KMatrix, Q8KRows};
use rapid_kernels::{Format, Q8Rows, QuantMatrix};

/// A K-quant matrix's products per second (the tiled kernels: CPUs with AVX-512 VNNI).
fn kquant(format: KFormat, rows: usize, cols: usize, n: usize) {
    let data: Vec<u8> = (0..rows * cols / 256 * format.block_bytes())
        .map(|i| {
            // Keep the f16 scales small and finite (Q4_K: the first 4 bytes; Q6_K: the last 2).
            let at = i % format.block_bytes();
            let scale = if format == KFormat::Q4K { at < 4 } else { at >= 208 };
            if scale { 0x10 } else { (i * 7 % 251) as u8 }
        })
        .collect();
    let Some(matrix) = KMatrix::new(format, rows, cols, &data).expect("matrix") else {
        println!("{format:?}: no tiled kernel on this CPU");
        return;
    };
    let acts = Q8KRows::quantize(&activations(cols, n), cols).expect("acts");
    time(&format!("{format:?}"), rows, cols, n, |out| matrix.matmul(&acts, out).expect("matmul"));
}

fn activations(cols: usize, n: usize) -> Vec<f32> {
    (0..cols * n).map(|i| (i as f32 * 0.37).sin()).collect()
}

/// Runs `product` (writing `rows x n` outputs) for about 2 G multiply-adds in 5 trials and
/// prints the fastest trial's rate (the least disturbed by other load on the machine).
fn time(label: &str, rows: usize, cols: usize, n: usize, product: impl Fn(&mut [f32])) {
    let mut out = vec![0f32; rows * n];
    let reps = (400_000_000 / (rows * cols * n)).max(3);
    let best = (0..5)
        .map(|_| {
            let start = std::time::Instant::now();
            for _ in 0..reps {
                product(&mut out);
            }
            start.elapsed().as_secs_f64() / reps as f64
        })
        .fold(f64::INFINITY, f64::min);
    println!(
        "{label} {rows}x{cols} x {n} rows on {} threads: {:.1} us per product, {:.1} GMAC/s (best of 5)",
        rapid_kernels::threads::available(),
        best * 1e6,
        (rows * cols * n) as f64 / best / 1e9
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let num = |i: usize, default: usize| args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    match args.first().map(String::as_str) {
        Some("q4_k") => return kquant(KFormat::Q4K, num(1, 640), num(2, 2048), num(3, 1)),
        Some("q6_k") => return kquant(KFormat::Q6K, num(1, 640), num(2, 2048), num(3, 1)),
        _ => {}
    }
    let format = match args.first().map(String::as_str).unwrap_or("q4_1") {
        "q4_0" => Format::Q4_0,
        "q5_0" => Format::Q5_0,
        "q8_0" => Format::Q8_0,
        _ => Format::Q4_1,
    };
    let (rows, cols, n) = (num(1, 1536), num(2, 576), num(3, 1));
    let data: Vec<u8> = (0..rows * cols / 32 * format.block_bytes())
        .map(|i| {
            // Keep f16 scales small and finite: the first two bytes of each block.
            if i % format.block_bytes() < 4 { 0x10 } else { (i * 7 % 251) as u8 }
        })
        .collect();
    let matrix = QuantMatrix::new(format, rows, cols, data).expect("matrix");
    let acts = Q8Rows::quantize(&activations(cols, n), cols).expect("acts");
    time(&format!("{format:?}"), rows, cols, n, |out| matrix.matmul(&acts, out).expect("matmul"));
}
