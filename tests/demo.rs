//! End to end: the demo task trains and its held-out loss falls.

use cranelora::demo::{run_demo, DemoConfig};

#[test]
fn demo_training_reduces_the_test_loss() {
    let cfg = DemoConfig {
        epochs: 4,
        batch: 64,
        samples: 512,
        seed: 3,
    };
    let mut losses = Vec::new();
    run_demo(cfg, &mut |_, train, test| losses.push((train, test))).unwrap();
    assert_eq!(losses.len(), 4);
    let (first, last) = (losses[0].1, losses[3].1);
    assert!(last < 0.7 * first, "test loss {first} → {last}");
}
