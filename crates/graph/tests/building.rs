//! Building nodes: shape and dtype errors name the node, op and shapes;
//! the verifier catches hand-broken graphs and names every violation.

use cranelora_graph::{
    verify, violations, Conv2dParams, DType, Error, Graph, Node, NodeId, Op, ReduceKind, Shape,
};

fn two_inputs(a: &[usize], b: &[usize]) -> (Graph, NodeId, NodeId) {
    let mut g = Graph::new();
    let x = g.input("x", a.to_vec(), DType::F32);
    let y = g.input("y", b.to_vec(), DType::F32);
    (g, x, y)
}

#[test]
fn shape_errors_name_the_node_op_and_shapes() {
    let (mut g, x, y) = two_inputs(&[2, 3], &[4, 5]);
    let err = g.named("encoder.fc1.lora_a").matmul(x, y).unwrap_err();
    match &err {
        Error::Shape {
            node, op, shapes, ..
        } => {
            assert_eq!(node.name.as_deref(), Some("encoder.fc1.lora_a"));
            assert_eq!(op, "matmul");
            assert_eq!(shapes, &[Shape::from([2, 3]), Shape::from([4, 5])]);
        }
        other => panic!("expected a shape error, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains("encoder.fc1.lora_a") && msg.contains("[2, 3]"),
        "{msg}"
    );
    assert!(msg.contains("matmul") && msg.contains("[4, 5]"), "{msg}");
    // The name was consumed: the next node is unnamed.
    let err = g.matmul(x, x).unwrap_err();
    assert!(err.to_string().contains("unnamed"), "{err}");
    let err = g.named("residual").add(x, y).unwrap_err();
    assert!(err.to_string().contains("do not broadcast"), "{err}");
}

#[test]
fn dtype_errors_name_the_node_and_dtypes() {
    let mut g = Graph::new();
    let x = g.input("x", [2], DType::F32);
    let ids = g.input("ids", [2], DType::I64);
    let err = g.named("mix").add(x, ids).unwrap_err();
    assert!(
        matches!(&err, Error::DType { dtypes, .. } if dtypes == &[DType::F32, DType::I64]),
        "{err}"
    );
    assert!(err.to_string().contains("\"mix\""), "{err}");
    let table = g.input("table", [4, 3], DType::F32);
    let err = g.named("emb").gather(table, x).unwrap_err();
    assert!(err.to_string().contains("ids must be i64"), "{err}");
    let err = g.named("act").exp(ids).unwrap_err();
    assert!(matches!(err, Error::DType { .. }), "{err}");
}

#[test]
fn attribute_and_arity_errors_are_errors_not_panics() {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F64);
    assert!(g.reduce(x, ReduceKind::Sum, &[2], false).is_err());
    assert!(g.softmax(x, 5).is_err());
    assert!(g.transpose(x, &[0, 0]).is_err());
    assert!(g.slice(x, &[0..3, 0..1]).is_err());
    assert!(g.reshape(x, [4]).is_err());
    assert!(g.broadcast(x, [3, 3]).is_err());
    assert!(g.concat(&[], 0).is_err());
    let w = g.input("w", [2, 3, 5, 5], DType::F64);
    let img = g.input("img", [1, 3, 4, 4], DType::F64);
    let err = g
        .named("conv")
        .conv2d(img, w, Conv2dParams::default())
        .unwrap_err();
    assert!(
        err.to_string().contains("larger than the padded input"),
        "{err}"
    );
    let err = g.push(Op::Add, &[x]).unwrap_err();
    assert!(matches!(err, Error::Arity { actual: 1, .. }), "{err}");
    let err = g.push(Op::Input { name: "z".into() }, &[]).unwrap_err();
    assert!(err.to_string().contains("Graph::input"), "{err}");
    // An id that is not a node of this graph.
    let mut other = Graph::new();
    let far: Vec<NodeId> = (0..9)
        .map(|i| other.input(&format!("a{i}"), [1], DType::F32))
        .collect();
    let err = g.named("stranger").neg(far[8]).unwrap_err();
    assert!(matches!(err, Error::UnknownNode { .. }), "{err}");
    assert!(err.to_string().contains("\"stranger\""), "{err}");
}

fn valid_graph() -> (Graph, NodeId, NodeId) {
    let mut g = Graph::new();
    let x = g.input("x", [2, 3], DType::F32);
    let w = g.parameter("fc.weight", [3, 4], DType::F32);
    let y = g.named("fc").matmul(x, w).expect("2×3 · 3×4");
    g.set_outputs(&[y]).expect("y is a node");
    (g, x, y)
}

#[test]
fn verifier_accepts_built_graphs() {
    let (g, _, _) = valid_graph();
    assert_eq!(verify(&g), Ok(()));
}

#[test]
fn verifier_reports_a_wrong_declared_shape_with_the_node_name() {
    let (mut g, x, _) = valid_graph();
    let bad = Node {
        op: Op::Relu,
        shape: Shape::from([3, 2]),
        dtype: DType::F32,
        name: Some("block.act".into()),
    };
    g.push_unchecked(bad, &[x]);
    let err = verify(&g).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("block.act") && msg.contains("relu"), "{msg}");
    assert!(
        msg.contains("declared f32[3, 2]") && msg.contains("f32[2, 3]"),
        "{msg}"
    );
}

#[test]
fn verifier_reports_every_violation() {
    let (mut g, x, y) = valid_graph();
    // 1. A wrong operand count.
    let add = Node {
        op: Op::Add,
        shape: Shape::from([2, 3]),
        dtype: DType::F32,
        name: Some("lonely_add".into()),
    };
    g.push_unchecked(add, &[x]);
    // 2. An Input that is not listed in the inputs.
    let stray = Node {
        op: Op::Input {
            name: "stray".into(),
        },
        shape: Shape::from([1]),
        dtype: DType::F32,
        name: Some("stray".into()),
    };
    g.push_unchecked(stray, &[]);
    // 3. A wrong dtype.
    let cast = Node {
        op: Op::Cast(DType::F64),
        shape: Shape::from([2, 4]),
        dtype: DType::F32,
        name: Some("to_f64".into()),
    };
    g.push_unchecked(cast, &[y]);
    // 4. A removed output and 5. a duplicate parameter name.
    g.parameter("fc.weight", [1], DType::F32);
    let gone = g.neg(y).expect("neg");
    g.set_outputs(&[y, gone]).expect("both exist");
    g.remove_node(gone);
    let all = violations(&g);
    let text: Vec<String> = all.iter().map(ToString::to_string).collect();
    let joined = text.join("\n");
    assert_eq!(all.len(), 5, "{joined}");
    assert!(
        joined.contains("\"lonely_add\" (add): takes 2 operand(s), got 1"),
        "{joined}"
    );
    assert!(joined.contains("\"stray\"") && joined.contains("missing from the graph's inputs"));
    assert!(
        joined.contains("\"to_f64\"") && joined.contains("f64[2, 4]"),
        "{joined}"
    );
    assert!(
        joined.contains("output %") && joined.contains("not a node"),
        "{joined}"
    );
    assert!(joined.contains("same name as %1"), "{joined}");
}

#[test]
fn verifier_reports_cycles_and_bad_operand_positions() {
    let (mut g, _, y) = valid_graph();
    let e = g.exp(y).expect("exp");
    g.add_edge_unchecked(y, e, 3);
    let err = verify(&g).unwrap_err().to_string();
    assert!(err.contains("operand positions [0, 3]"), "{err}");

    let mut g = Graph::new();
    let a = g.input("a", [1], DType::F32);
    let b = g.named("b").neg(a).expect("neg");
    let c = g.named("c").neg(b).expect("neg");
    g.add_edge_unchecked(c, b, 1);
    g.set_outputs(&[c]).expect("c exists");
    let err = verify(&g).unwrap_err().to_string();
    assert!(err.contains("is on a cycle"), "{err}");
    assert!(g.topo_order().is_err());
}

#[test]
fn replace_uses_rewires_users_and_outputs() {
    let (mut g, x, y) = valid_graph();
    let r = g.relu(y).expect("relu");
    let copy = g.stop_gradient(y).expect("identity");
    g.set_outputs(&[y, r]).expect("exist");
    g.replace_uses(y, copy).expect("same type");
    assert_eq!(g.operands(r), vec![copy]);
    assert_eq!(g.outputs(), &[copy, r]);
    assert!(g.replace_uses(x, y).is_err(), "types differ");
    // The stop_gradient's own operand is still y.
    assert_eq!(g.operands(copy), vec![y]);
    assert_eq!(verify(&g), Ok(()));
}
