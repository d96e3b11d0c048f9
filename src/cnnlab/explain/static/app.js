// cnnlab explain: the page. Plain JavaScript, no libraries, no build step; every number comes from
// the server's JSON API, which runs the trained network with cnnlab's own code. The page speaks
// English and Simplified Chinese (the terms of the Chinese edition of d2l).
"use strict";

// ---------------------------------------------------------------- words

const STRINGS = {
  en: {
    loading: "loading…",
    loading_input: "loading {what}…",
    tab_network: "The network",
    tab_number: "How one number is made",
    tab_playground: "Playground",
    tab_training: "Training",
    switch_language: "中文",
    switch_language_title: "切换到中文",
    run_info: "{model} on {dataset}, {progress} · {run}",
    epochs: (p) => `${p.n} epoch${p.n === 1 ? "" : "s"}`,
    training_progress: "training: epoch {done}{planned}",
    of_planned: " of {n}",
    test_image: "Test image",
    index: "index",
    show: "show",
    class: "class",
    next_of_class: "next of class",
    next_misclassified: "next misclassified",
    your_image: "Your image",
    upload: "upload an image",
    draw_title: "draw with the mouse",
    classify_drawing: "classify drawing",
    clear: "clear",
    input: "Input",
    test_image_n: "test image {n}",
    your_image_label: "your image",
    inverted: " (inverted: its background was light)",
    true_class: ", true class: {name}",
    colour_scale: "Colour scale",
    negative: "negative (blue)",
    zero: "0 (white)",
    positive: "positive (orange)",
    scale_note: "Each layer is scaled to its own largest |value|: its min and max are in its header. The input image is gray.",
    all_channels: "showing all channels of each layer (the widest has {n})",
    some_channels: "showing up to {n} channels of each layer (the widest has {m})",
    more_channels: "more channels",
    click_hint: "click any unit of a convolution, pooling or dense layer to see how it is made",
    more_maps: "+{n} more",
    channel_n: "channel {c}",
    values_n: "{n} values",
    size_times: "x",
    conv_name: "conv {size}, {channels} channels",
    dense_name: "dense {n}",
    max_pool_name: "max pool {size}",
    avg_pool_name: "avg pool {size}",
    "op_global avg pool": "global avg pool",
    "op_global max pool": "global max pool",
    "op_batch norm": "batch norm",
    op_flatten: "flatten",
    op_inception: "inception",
    op_residual: "residual",
    op_denseblock: "denseblock",
    kind_conv: "convolution",
    kind_pool: "pooling",
    kind_dense: "dense",
    kind_flatten: "flatten",
    kind_block: "block",
    conv_sizes: "kernel {k}, padding {p}, stride {s}",
    pool_sizes: "window {k}, stride {s}",
    pool_sizes_padded: "window {k}, padding {p}, stride {s}",
    kernel_tensor: "kernel tensor {shape}",
    kernel_tensor_title: "output channels × input channels × kernel height × kernel width",
    weight_matrix: "weights {shape}",
    weight_matrix_title: "outputs × inputs",
    flatten_sizes: "{c} channels of {h}×{w}, read row by row into a vector of {n}",
    global_pool: "global: one value per channel",
    output_shape_is: "output shape {shape}",
    labelled: "{label}: {text}",
    height_width: "height, width",
    rows_label: "rows",
    columns_label: "columns",
    formula_title: "⌊(n − k + p + s) / s⌋ (d2l 6.3): n the input size, k the kernel size, p the padding of both sides together, s the stride",
    min_max: "min {min}, max {max}",
    prediction_title: "From logits to probabilities: predicted ",
    right: " (right)",
    wrong: " (wrong)",
    softmax_lead: "softmax (d2l 3.4) turns the last layer's outputs, the logits o, into probabilities: each logit is exponentiated, then divided by the sum of all of them, so every probability is positive and together they add up to 1.",
    col_class: "class",
    col_logit: "logit o",
    col_exp: "exp(o)",
    col_exp_shifted: "exp(o − max o)",
    col_prob: "÷ sum = probability",
    sum: "sum",
    layer: "layer",
    unit: "unit",
    explain: "explain",
    unit_hint: "or click a unit in the map below, or on the network page",
    move_unit: "move the unit:",
    left: "← left",
    right_step: "right →",
    up: "↑ up",
    down: "↓ down",
    arrow_keys: "(or the arrow keys)",
    feature_map: "Feature map",
    output_vector: "Output vector",
    layer_input: "Layer input",
    input_vector: "Input vector",
    unit_title_3d: "Layer {layer} ({name}), channel {c}, row {i}, column {j}",
    unit_title_1d: "Layer {layer} ({name}), unit {k}",
    name_channel: "channel",
    name_row: "row",
    name_column: "column",
    name_unit: "unit",
    unit_form: "layer {layer} ({name}) has outputs of shape {shape}: give the unit as {names}, for example {example}",
    unit_range: "{what} {value} is out of range for layer {layer} ({name}): 0 to {max}",
    not_explained: "layer {layer} ({name}) is a {kind} layer: its numbers are not explained; click a convolution, pooling or dense layer",
    conv_lead: "The {k} kernel of output channel {c} is laid on the input at row {oy}, column {ox} (padding {p}, stride {s}). In each of the {n} input channels the window and the kernel are multiplied element by element and the products summed (corr2d); the channels' sums add up (corr2d_multi_in).",
    xcorr_note: "This is the cross-correlation of d2l 6.1: the kernel is laid on the input as it is, not flipped. What deep-learning libraries call a convolution is this cross-correlation; a convolution in the mathematical sense would flip the kernel first.",
    input_channel: "input channel {c}",
    window: "window",
    kernel: "kernel",
    products: "products",
    channel_sum: "sum: {v}",
    pad: "pad",
    hover_hint: "hover a product to light its window cell, kernel cell and input position",
    product_at: "input row {i}, column {j}: {x} × {w} = {p}",
    product_pad: "zero padding at row {i}, column {j}: 0 × {w} = {p}",
    more_channels_sum: "… and {n} more input channels, whose sums add up to {v}",
    pool_lead: "A {k} window (stride {s}) of input channel {c}, from row {oy}, column {ox}: its {what} is the output (pool2d).",
    maximum: "maximum",
    mean: "mean",
    pool_max: "max of the window = ",
    pool_mean: "mean of the window = ",
    pool_cell: "input row {i}, column {j}: {x}",
    dense_lead: "Each of the {n} inputs is multiplied by its weight; the products are summed. The {k} largest products (by size):",
    col_input: "input",
    col_value: "value",
    col_weight: "weight",
    col_product: "product",
    flat_position: " (channel {c}, row {i}, column {j})",
    the_other: "the other {n}",
    sum_of_products: "sum of all products = ",
    plus_bias: ", plus the bias {b} = {z}",
    no_bias: " (no bias: the batch norm after it shifts instead)",
    then_each: "then, value by value:",
    step_bn: "batch norm: ({x} − {mean}) / √({var} + {eps}) × {w} + {b} = {y}",
    step_dropout: "dropout (does nothing once trained): {x} = {y}",
    step_activation_f: "{op}: {formula} of {x} = {y}",
    step_activation: "{op} of {x} = {y}",
    result: "result ",
    map_holds: "; the feature map holds ",
    vector_holds: "; the output vector holds ",
    same_number: "  ✓ the same number",
    they_differ: "  ✗ they differ",
    input_note_window: "channel {c}{padding}; red: this window, dashed: one stride ({s}) away",
    input_note_padding: ", zero padding {p} in gray",
    input_note_vector: "{n} values, read row by row; red: the {k} inputs with the largest products",
    image: "Image",
    pg_current: "the network page's input",
    pg_book: "the book's 6x8 black-and-white example",
    kernel_title: "Kernel",
    rows: "rows",
    columns: "columns",
    presets: "presets:",
    preset_book: "book's edge [1, -1]",
    preset_vertical: "vertical edge",
    preset_horizontal: "horizontal edge",
    preset_blur: "blur",
    preset_sharpen: "sharpen",
    preset_identity: "identity",
    padding_and_stride: "Padding and stride",
    padding: "padding",
    stride: "stride",
    pg_xcorr: "The output is the cross-correlation of d2l 6.1 (corr2d): the kernel slides over the input as it is, not flipped.",
    output: "Output",
    output_shape: "output shape",
    formula_hint: "n: input size, k: kernel size, p: padding of both sides together, s: stride (d2l 6.3)",
    output_values: "Output values",
    acc_validation: "validation accuracy",
    acc_test: "test accuracy",
    with_tta: " with TTA ({tta})",
    train_loss: "train loss",
    train_accuracy: "train accuracy",
    axis_epoch: "epoch",
    axis_loss: "loss",
    axis_accuracy: "accuracy",
    series_on_axis: "{name} ({axis})",
    finished: "finished: {epochs}{acc}",
    not_finished: "not finished: epoch {done}{planned} done{acc}{age} (refreshed every 3 s)",
    acc_part: ", {name} {v}",
    age: ", updated {s} s ago",
    split_test: "test",
    split_val: "validation",
    per_class_title: "Per-class accuracy on the {split} split",
    overall: "{split} accuracy, all classes: {v}",
    overall_no_tta: " (the page's plain forward pass, without TTA)",
    confusion_title: "Confusion matrix on the {split} split",
    confusion_note: "(rows: true class, columns: predicted; click a cell)",
    cell_title: "true {t}, predicted {p}: {n}",
    confused_note: "{k} classes are too many for a table: the {n} most frequent confusions of {m} (click one)",
    confused_row: "true {t} → predicted {p}: {n}",
    cell_images: "true {t}, predicted {p}: {n} images",
    cell_first: " (the first {k})",
    cell_click: "; click one to look inside",
  },
  zh: {
    loading: "加载中…",
    loading_input: "正在加载{what}…",
    tab_network: "网络",
    tab_number: "一个数是怎样算出来的",
    tab_playground: "互相关运算试验",
    tab_training: "训练",
    switch_language: "English",
    switch_language_title: "Switch to English",
    run_info: "{model}，数据集 {dataset}，{progress} · {run}",
    epochs: "{n} 个迭代周期",
    training_progress: "训练中：第 {done} 个迭代周期{planned}",
    of_planned: "（共 {n} 个）",
    test_image: "测试图像",
    index: "序号",
    show: "显示",
    class: "类别",
    next_of_class: "该类别的下一张",
    next_misclassified: "下一张分类错误的图像",
    your_image: "你的图像",
    upload: "上传图片",
    draw_title: "用鼠标画",
    classify_drawing: "给这幅画分类",
    clear: "清除",
    input: "输入",
    test_image_n: "测试图像 {n}",
    your_image_label: "你的图像",
    inverted: "（已反色：它的背景是浅色）",
    true_class: "，真实类别：{name}",
    colour_scale: "颜色刻度",
    negative: "负（蓝）",
    zero: "0（白）",
    positive: "正（橙）",
    scale_note: "每层按自身的最大绝对值缩放：最小值和最大值写在该层的标题中。输入图像为灰度。",
    all_channels: "显示每层的全部通道（最宽的一层有 {n} 个通道）",
    some_channels: "每层最多显示 {n} 个通道（最宽的一层有 {m} 个）",
    more_channels: "更多通道",
    click_hint: "点击卷积层、汇聚层或全连接层的任一单元，看看它是怎样算出来的",
    more_maps: "另有 {n} 个",
    channel_n: "通道 {c}",
    values_n: "{n} 个值",
    size_times: "×",
    conv_name: "卷积层 {size}，{channels} 个通道",
    dense_name: "全连接层 {n}",
    max_pool_name: "最大汇聚层 {size}",
    avg_pool_name: "平均汇聚层 {size}",
    "op_global avg pool": "全局平均汇聚层",
    "op_global max pool": "全局最大汇聚层",
    "op_batch norm": "批量规范化",
    op_flatten: "展平",
    op_inception: "Inception 块",
    op_residual: "残差块",
    op_denseblock: "稠密块",
    kind_conv: "卷积层",
    kind_pool: "汇聚层",
    kind_dense: "全连接层",
    kind_flatten: "展平层",
    kind_block: "组合块",
    conv_sizes: "卷积核 {k}，填充 {p}，步幅 {s}",
    pool_sizes: "汇聚窗口 {k}，步幅 {s}",
    pool_sizes_padded: "汇聚窗口 {k}，填充 {p}，步幅 {s}",
    kernel_tensor: "卷积核张量 {shape}",
    kernel_tensor_title: "输出通道数 × 输入通道数 × 卷积核的高 × 卷积核的宽",
    weight_matrix: "权重 {shape}",
    weight_matrix_title: "输出数 × 输入数",
    flatten_sizes: "{c} 个 {h}×{w} 的通道，逐行展平为长度 {n} 的向量",
    global_pool: "全局：每个通道一个值",
    output_shape_is: "输出形状 {shape}",
    labelled: "{label}：{text}",
    height_width: "高、宽",
    rows_label: "高",
    columns_label: "宽",
    formula_title: "⌊(n − k + p + s) / s⌋（d2l 6.3）：n 为输入大小，k 为卷积核大小，p 为两侧填充之和，s 为步幅",
    min_max: "最小值 {min}，最大值 {max}",
    prediction_title: "从 logits 到概率：预测为",
    right: "（正确）",
    wrong: "（错误）",
    softmax_lead: "softmax（d2l 3.4）把最后一层的输出，即未规范化的预测 o（logits），变成概率：先对每个 logit 求指数，再除以所有指数之和，这样每个概率都是正数，且总和为 1。",
    col_class: "类别",
    col_logit: "logit o",
    col_exp: "exp(o)",
    col_exp_shifted: "exp(o − max o)",
    col_prob: "÷ 总和 = 概率",
    sum: "总和",
    layer: "层",
    unit: "单元",
    explain: "解释",
    unit_hint: "或点击下方图中的单元，或在网络页面上点击",
    move_unit: "移动单元：",
    left: "← 左",
    right_step: "右 →",
    up: "↑ 上",
    down: "↓ 下",
    arrow_keys: "（也可以用方向键）",
    feature_map: "特征映射",
    output_vector: "输出向量",
    layer_input: "该层的输入",
    input_vector: "输入向量",
    unit_title_3d: "第 {layer} 层（{name}），通道 {c}，第 {i} 行，第 {j} 列",
    unit_title_1d: "第 {layer} 层（{name}），单元 {k}",
    name_channel: "通道",
    name_row: "行",
    name_column: "列",
    name_unit: "单元",
    unit_form: "第 {layer} 层（{name}）的输出形状为 {shape}：请按 {names} 给出单元，例如 {example}",
    unit_range: "{what} {value} 超出第 {layer} 层（{name}）的范围：0 至 {max}",
    not_explained: "第 {layer} 层（{name}）是{kind}：它的数值不作解释；请点击卷积层、汇聚层或全连接层",
    conv_lead: "输出通道 {c} 的 {k} 卷积核放在输入的第 {oy} 行、第 {ox} 列（填充 {p}，步幅 {s}）。在 {n} 个输入通道的每一个中，窗口与卷积核按元素相乘，再把乘积相加（corr2d）；各通道的和再相加（corr2d_multi_in）。",
    xcorr_note: "这就是 d2l 6.1 的互相关运算：卷积核按原样放在输入上，不翻转。深度学习框架所说的卷积其实就是互相关运算；数学意义上的卷积会先把卷积核翻转。",
    input_channel: "输入通道 {c}",
    window: "窗口",
    kernel: "卷积核",
    products: "乘积",
    channel_sum: "和：{v}",
    pad: "填充",
    hover_hint: "把鼠标移到乘积上，可看到对应的窗口元素、卷积核元素和输入位置",
    product_at: "输入第 {i} 行第 {j} 列：{x} × {w} = {p}",
    product_pad: "第 {i} 行第 {j} 列是零填充：0 × {w} = {p}",
    more_channels_sum: "……另有 {n} 个输入通道，它们的和加起来是 {v}",
    pool_lead: "输入通道 {c} 上从第 {oy} 行、第 {ox} 列开始的 {k} 汇聚窗口（步幅 {s}）：它的{what}就是输出（pool2d）。",
    maximum: "最大值",
    mean: "平均值",
    pool_max: "窗口的最大值 = ",
    pool_mean: "窗口的平均值 = ",
    pool_cell: "输入第 {i} 行第 {j} 列：{x}",
    dense_lead: "{n} 个输入各自乘以它的权重，再把乘积相加。绝对值最大的 {k} 个乘积：",
    col_input: "输入",
    col_value: "值",
    col_weight: "权重",
    col_product: "乘积",
    flat_position: "（通道 {c}，第 {i} 行，第 {j} 列）",
    the_other: "其余 {n} 个",
    sum_of_products: "所有乘积之和 = ",
    plus_bias: "，加上偏置 {b} = {z}",
    no_bias: "（没有偏置：由其后的批量规范化负责平移）",
    then_each: "然后逐个值计算：",
    step_bn: "批量规范化：({x} − {mean}) / √({var} + {eps}) × {w} + {b} = {y}",
    step_dropout: "暂退法（训练后不起作用）：{x} = {y}",
    step_activation_f: "{op}：{formula}，输入 {x}，得 {y}",
    step_activation: "{op}：输入 {x}，得 {y}",
    result: "结果 ",
    map_holds: "；特征映射中的值为 ",
    vector_holds: "；输出向量中的值为 ",
    same_number: "  ✓ 是同一个数",
    they_differ: "  ✗ 两者不同",
    input_note_window: "通道 {c}{padding}；红框：当前窗口，虚线：相距一个步幅（{s}）的窗口",
    input_note_padding: "，灰色为零填充 {p}",
    input_note_vector: "{n} 个值，逐行排列；红框：乘积最大的 {k} 个输入",
    image: "图像",
    pg_current: "网络页面的输入",
    pg_book: "书中 6×8 的黑白图像示例",
    kernel_title: "卷积核",
    rows: "行数",
    columns: "列数",
    presets: "预设：",
    preset_book: "书中的边缘检测 [1, -1]",
    preset_vertical: "竖直边缘",
    preset_horizontal: "水平边缘",
    preset_blur: "模糊",
    preset_sharpen: "锐化",
    preset_identity: "恒等",
    padding_and_stride: "填充和步幅",
    padding: "填充",
    stride: "步幅",
    pg_xcorr: "输出是 d2l 6.1 的互相关运算（corr2d）：卷积核按原样在输入上滑动，不翻转。",
    output: "输出",
    output_shape: "输出形状",
    formula_hint: "n：输入大小，k：卷积核大小，p：两侧填充之和，s：步幅（d2l 6.3）",
    output_values: "输出的值",
    acc_validation: "验证集精度",
    acc_test: "测试集精度",
    with_tta: "（测试时增强 {tta}）",
    train_loss: "训练损失",
    train_accuracy: "训练精度",
    axis_epoch: "迭代周期",
    axis_loss: "损失",
    axis_accuracy: "精度",
    series_on_axis: "{name}（{axis}）",
    finished: "已完成：{epochs}{acc}",
    not_finished: "未完成：已完成第 {done} 个迭代周期{planned}{acc}{age}（每 3 秒刷新）",
    acc_part: "，{name} {v}",
    age: "，{s} 秒前更新",
    split_test: "测试集",
    split_val: "验证集",
    per_class_title: "{split}上各类别的精度",
    overall: "{split}精度（全部类别）：{v}",
    overall_no_tta: "（本页面的普通前向传播，不用测试时增强）",
    confusion_title: "{split}上的混淆矩阵",
    confusion_note: "（行：真实类别，列：预测类别；点击单元格）",
    cell_title: "真实 {t}，预测 {p}：{n}",
    confused_note: "{k} 个类别太多，无法列成表格：{m} 种混淆中最常见的 {n} 种（点击查看）",
    confused_row: "真实 {t} → 预测 {p}：{n}",
    cell_images: "真实 {t}，预测 {p}：{n} 张图像",
    cell_first: "（显示前 {k} 张）",
    cell_click: "；点击一张查看网络内部",
  },
};

let lang = "en";

// The string ``key`` in the page's language with ``{name}`` filled in from ``params``; ``fallback`` (else
// the key) where neither language has it (an activation's or a block's own name).
function t(key, params = {}, fallback = key) {
  const entry = STRINGS[lang][key] ?? STRINGS.en[key];
  if (entry === undefined) return fallback;
  if (typeof entry === "function") return entry(params);
  return entry.replace(/\{(\w+)\}/g, (_, name) => (params[name] === undefined ? "" : String(params[name])));
}

// Chinese when the first of the browser's languages that the page speaks is Chinese (zh, zh-CN, zh-TW, ...).
function browserLanguage() {
  const wanted = navigator.languages && navigator.languages.length ? navigator.languages : [navigator.language || "en"];
  const first = wanted.find((l) => /^(zh|en)\b/i.test(l));
  return first && /^zh/i.test(first) ? "zh" : "en";
}

// ---------------------------------------------------------------- helpers

const $ = (sel) => document.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
};
const SVG = "http://www.w3.org/2000/svg";
const svgEl = (tag, attrs = {}, text = null) => {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== null) node.textContent = text;
  return node;
};
// A number to ``digits`` decimals; a tiny negative number that rounds to zero is written 0.000, not -0.000.
const fmt = (v, digits = 4) => {
  if (v === null || v === undefined) return "–";
  const text = Number(v).toFixed(digits);
  return /^-0\.?0*$/.test(text) ? text.slice(1) : text;
};
const signed = (v, digits = 4) => (Number(fmt(v, digits)) < 0 ? `(${fmt(v, digits)})` : fmt(v, digits));
const pair = (values) => (values[0] === values[1] ? String(values[0]) : values.join("×"));
const clamp = (v, low, high) => Math.min(high, Math.max(low, v));

const state = {
  run: null, source: { test: 0 }, forward: null, maxChannels: 16, unit: null, explanation: null, polling: null,
  playground: null, training: null, evaluation: null, cell: null, tickets: {},
};

function showError(message) {
  const box = $("#error");
  box.textContent = message;
  box.hidden = !message;
}

class ApiError extends Error {}

async function api(path, body) {
  const options = body === undefined ? {} : {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  };
  const response = await fetch(path, options);
  const answer = await response.json();
  if (!response.ok) {
    showError(answer.error || `request failed (${response.status})`);
    throw new ApiError(answer.error);
  }
  showError("");
  return answer;
}

// An event handler whose failure is shown on the page, never left as an uncaught error.
const guard = (fn) => (...args) => Promise.resolve().then(() => fn(...args)).catch((err) => {
  if (!(err instanceof ApiError)) showError(String((err && err.message) || err));
});

// A new request of ``kind`` (network, explain, ...): its ticket, so that an older answer arriving late is dropped.
const ticket = (kind) => (state.tickets[kind] = (state.tickets[kind] || 0) + 1);
const current = (kind, n) => state.tickets[kind] === n;

// While a request is in flight the area it will fill says so, and its old content is dimmed.
function busy(node, on, text = t("loading")) {
  node.classList.toggle("loading", on);
  node.setAttribute("aria-busy", on ? "true" : "false");
  let note = node.querySelector(":scope > .loading-note");
  if (on) {
    if (!note) { note = el("div", { class: "loading-note", role: "status" }); node.prepend(note); }
    note.textContent = text;
  } else if (note) note.remove();
}

async function loading(node, kind, text, request) {
  const n = ticket(kind);
  busy(node, true, text);
  try {
    const answer = await request();
    return current(kind, n) ? answer : null;
  } finally {
    if (current(kind, n)) busy(node, false);
  }
}

// ---------------------------------------------------------------- drawing

// Positive values orange, negative blue, zero white: the scale is each layer's largest |value|.
function colour(v, scale) {
  if (v === null) return [247, 247, 245];     // no value (the end of a vector's last row)
  const t = Math.max(-1, Math.min(1, scale > 0 ? v / scale : 0));
  if (t >= 0) return [255 - 35 * t, 255 - 170 * t, 255 - 255 * t];
  return [255 + 225 * t, 255 + 135 * t, 255 + 45 * t];
}
const rgb = (c) => `rgb(${Math.round(c[0])},${Math.round(c[1])},${Math.round(c[2])})`;

// One pixel per value, scaled up by CSS (crisp); ``cell`` > 0 draws each value as a cell x cell square
// instead, so that lines drawn on top stay sharp.
function drawGrid(canvas, rows, { scale = null, gray = false, zoom = 4, cell = 0 } = {}) {
  const h = rows.length, w = rows[0].length;
  const f = cell || 1;
  canvas.width = w * f;
  canvas.height = h * f;
  canvas.style.width = `${w * (cell || zoom)}px`;
  canvas.style.height = `${h * (cell || zoom)}px`;
  const ctx = canvas.getContext("2d");
  const img = ctx.createImageData(w * f, h * f);
  let m = scale;
  if (m === null) m = Math.max(1e-12, ...rows.flat().map((v) => Math.abs(v ?? 0)));
  rows.forEach((row, i) => row.forEach((v, j) => {
    const c = gray ? [v * 255 / m, v * 255 / m, v * 255 / m] : colour(v, m);
    for (let a = 0; a < f; a++) for (let b = 0; b < f; b++) img.data.set([c[0], c[1], c[2], 255], 4 * ((i * f + a) * w * f + j * f + b));
  }));
  ctx.putImageData(img, 0, 0);
}

function cellAt(canvas, event, rows = canvas.height, cols = canvas.width) {
  const rect = canvas.getBoundingClientRect();
  const j = Math.floor(((event.clientX - rect.left) / rect.width) * cols);
  const i = Math.floor(((event.clientY - rect.top) / rect.height) * rows);
  return [Math.min(rows - 1, Math.max(0, i)), Math.min(cols - 1, Math.max(0, j))];
}

// A 1-D layer is drawn as a near-square grid of cells, read row by row.
function vectorRows(values) {
  const cols = values.length <= 10 ? values.length : Math.ceil(Math.sqrt(values.length));
  const rows = [];
  for (let k = 0; k < values.length; k += cols) {
    const row = values.slice(k, k + cols);
    while (row.length < cols) row.push(null);
    rows.push(row);
  }
  return { rows, cols };
}

function drawLegend() {
  const canvas = $("#legend-scale");
  const ctx = canvas.getContext("2d");
  for (let x = 0; x < canvas.width; x++) {
    ctx.fillStyle = rgb(colour((2 * x) / (canvas.width - 1) - 1, 1));
    ctx.fillRect(x, 0, 1, canvas.height);
  }
}

// ---------------------------------------------------------------- names

function partName(part) {
  const size = (part.kernel_size || []).join(t("size_times"));
  if (part.op === "conv") return t("conv_name", { size, channels: part.channels });
  if (part.op === "dense") return t("dense_name", { n: part.features });
  if (part.op === "max pool") return t("max_pool_name", { size });
  if (part.op === "avg pool") return t("avg_pool_name", { size });
  return t(`op_${part.op}`, {}, part.op);
}
const layerName = (layer) => layer.parts.map(partName).join(" + ");
const kindName = (kind) => t(`kind_${kind}`, {}, kind);
// How many feature maps a layer draws: a map's channels, or those a flattened map came from.
const mapChannels = (layer) => (layer.shape.length === 3 ? layer.shape[0]
  : (layer.kind === "flatten" && layer.input_shape.length === 3 ? layer.input_shape[0] : 0));

// ---------------------------------------------------------------- the network

// The network's answer for ``source``; until it arrives the maps say which input they are loading.
async function loadInput(source) {
  const what = "test" in source ? t("test_image_n", { n: source.test }) : t("your_image_label");
  const request = JSON.stringify([source, state.maxChannels]);
  if (state.requested === request) return;        // the same question is on its way (a change event and a click)
  state.requested = request;
  $("#input-label").textContent = t("loading_input", { what });
  let answer;
  try {
    answer = await loading($("#network-view"), "network", t("loading_input", { what }),
      () => api("/api/forward", { input: source, max_channels: state.maxChannels }));
  } catch (err) {
    if (state.forward) renderInputLabel();
    throw err;
  } finally {
    if (state.requested === request) state.requested = null;
  }
  if (!answer) return;
  state.source = source;
  state.forward = answer;
  renderNetwork();
  if ($("#tab-playground").classList.contains("active")) await runPlayground();
}

function renderInputLabel() {
  const f = state.forward;
  const where = "test" in state.source ? t("test_image_n", { n: state.source.test })
    : t("your_image_label") + (state.inverted ? t("inverted") : "");
  const truth = f.label === null ? "" : t("true_class", { name: state.run.classes[f.label] });
  $("#input-label").textContent = `${where}${truth}`;
}

function layerHeader(layer, out) {
  const items = [el("h3", { text: `${layer.index}. ${layerName(layer)}` })];
  const k = layer.kernel_size ? layer.kernel_size.join("×") : null;
  if (layer.kind === "conv" && k) {
    items.push(el("div", { class: "sizes", text: t("conv_sizes", { k, p: pair(layer.padding), s: pair(layer.stride) }) }));
  } else if (layer.kind === "pool" && k) {
    const padded = layer.padding.some((p) => p);
    items.push(el("div", { class: "sizes", text: t(padded ? "pool_sizes_padded" : "pool_sizes", { k, p: pair(layer.padding), s: pair(layer.stride) }) }));
  } else if (layer.kind === "pool") {
    items.push(el("div", { class: "sizes", text: t("global_pool") }));
  } else if (layer.kind === "flatten" && layer.input_shape.length === 3) {
    const [c, h, w] = layer.input_shape;
    items.push(el("div", { class: "sizes", text: t("flatten_sizes", { c, h, w, n: layer.shape[0] }) }));
  }
  if (layer.weight_shape) {
    const conv = layer.weight_shape.length === 4;
    items.push(el("div", { class: "weights", title: t(conv ? "kernel_tensor_title" : "weight_matrix_title"),
      text: t(conv ? "kernel_tensor" : "weight_matrix", { shape: layer.weight_shape.join("×") }) }));
  }
  items.push(el("div", { class: "shape", text: t("output_shape_is", { shape: layer.shape.join(" × ") }) }));
  if (layer.formula) {
    const line = (f) => `⌊(${f.n} − ${f.k} + ${f.p} + ${f.s}) / ${f.s}⌋ = ${f.out}`;
    const [rows, cols] = layer.formula.map(line);
    const lines = rows === cols ? [t("labelled", { label: t("height_width"), text: rows })]
      : [t("labelled", { label: t("rows_label"), text: rows }), t("labelled", { label: t("columns_label"), text: cols })];
    items.push(el("div", { class: "formula", title: t("formula_title") }, ...lines.map((l) => el("div", { text: l }))));
  }
  const scale = Math.max(Math.abs(out.min), Math.abs(out.max), 1e-12);
  const swatch = (v) => { const s = el("span", { class: "swatch" }); s.style.background = rgb(colour(v, scale)); return s; };
  const [before, middle] = t("min_max", { min: "\u0000", max: "\u0000" }).split("\u0000");
  items.push(el("div", { class: "range" }, before, swatch(out.min), el("span", { class: "min", text: fmt(out.min, 3) }),
    middle, swatch(out.max), el("span", { class: "max", text: fmt(out.max, 3) })));
  return items;
}

function renderNetwork() {
  const f = state.forward;
  const run = state.run;
  drawGrid($("#input-image"), f.image, { scale: 255, gray: true, zoom: 4 });
  renderInputLabel();
  const box = $("#layers");
  box.replaceChildren();
  f.layers.forEach((out) => {
    const layer = run.layers[out.index];
    const scale = Math.max(Math.abs(out.min), Math.abs(out.max), 1e-12);
    const column = el("div", { class: `layer ${layer.kind}`, "data-index": layer.index }, ...layerHeader(layer, out));
    const maps = el("div", { class: "maps" });
    const drawMaps = (channels, total, side, unitOf) => {
      const zoom = Math.min(40, Math.max(24, 1.3 * side)) / side;     // maps of 24 to 40 pixels
      channels.forEach((map, c) => {
        const canvas = el("canvas", { class: "map", title: t("channel_n", { c }), "data-layer": layer.index, "data-channel": c });
        drawGrid(canvas, map, { scale, zoom });
        canvas.addEventListener("click", guard((e) => explainUnit(layer.index, unitOf(c, ...cellAt(canvas, e)))));
        maps.append(canvas);
      });
      if (channels.length < total) maps.append(el("span", { class: "more", text: t("more_maps", { n: total - channels.length }) }));
    };
    if (out.shape.length === 3) {
      drawMaps(out.values, out.shape[0], out.shape[2], (c, i, j) => [c, i, j]);
    } else if (layer.kind === "flatten" && layer.input_shape.length === 3) {
      // A flattened map is drawn as the channels it was read from, row by row, not as a square that cuts across them.
      const [channels, h, w] = layer.input_shape;
      const shown = Math.min(channels, state.maxChannels);
      const maps2d = Array.from({ length: shown }, (_, c) =>
        Array.from({ length: h }, (_, i) => out.values.slice(c * h * w + i * w, c * h * w + i * w + w)));
      drawMaps(maps2d, channels, w, (c, i, j) => [c * h * w + i * w + j]);
    } else {
      const { rows, cols } = vectorRows(out.values);
      const canvas = el("canvas", { class: "map vector", title: t("values_n", { n: out.shape[0] }), "data-layer": layer.index });
      drawGrid(canvas, rows, { scale, zoom: out.values.length <= 10 ? 14 : Math.max(2, Math.min(8, 120 / cols)) });
      canvas.addEventListener("click", guard((e) => {
        const [i, j] = cellAt(canvas, e);
        const k = i * cols + j;
        if (k < out.values.length) return explainUnit(layer.index, [k]);
      }));
      maps.append(canvas);
    }
    column.append(maps);
    box.append(column);
  });
  renderSoftmax();
  renderChannelNote();
}

// The logits, their exponentials, the sum and the probabilities: softmax worked out in front of the reader.
function renderSoftmax() {
  const f = state.forward;
  const classes = state.run.classes;
  const logits = f.logits;
  const top = Math.max(...logits);
  const shift = top > 80 ? top : 0;                 // exp overflows past ~709; the shift cancels in the quotient
  const exps = logits.map((o) => Math.exp(o - shift));
  const total = exps.reduce((a, b) => a + b, 0);
  const expText = (v) => (v !== 0 && (v >= 1e5 || v < 1e-3) ? v.toExponential(3) : v.toPrecision(4));
  const table = $("#softmax");
  table.replaceChildren(el("tr", {}, el("th", { text: t("col_class") }), el("th", { text: t("col_logit") }),
    el("th", { text: t(shift ? "col_exp_shifted" : "col_exp") }), el("th", { text: t("col_prob") }), el("th")));
  logits.forEach((o, k) => {
    const p = exps[k] / total;
    const bar = el("div", { class: "bar-fill" });
    bar.style.width = `${Math.round(100 * p)}%`;
    table.append(el("tr", { class: `${k === f.predicted ? "predicted" : ""}${k === f.label ? " truth" : ""}`, "data-class": k },
      el("td", { class: "cls", text: classes[k] }), el("td", { class: "logit", text: fmt(o, 3) }),
      el("td", { class: "exp", text: expText(exps[k]) }), el("td", { class: "prob", text: fmt(p, 3) }),
      el("td", { class: "bar-cell" }, el("div", { class: "bar-track" }, bar))));
  });
  table.append(el("tr", { class: "total" }, el("td", { text: t("sum") }), el("td"), el("td", { class: "exp-sum", text: expText(total) }),
    el("td", { text: fmt(1, 3) }), el("td")));
  const verdict = f.label === null ? "" : t(f.label === f.predicted ? "right" : "wrong");
  $("#prediction-title").replaceChildren(t("prediction_title"),
    el("strong", { id: "predicted-class", text: classes[f.predicted] }), verdict);
}

function renderChannelNote() {
  const widest = Math.max(0, ...state.run.layers.map(mapChannels));
  const all = state.maxChannels >= widest;
  $("#channel-note").textContent = all ? t("all_channels", { n: widest }) : t("some_channels", { n: state.maxChannels, m: widest });
  $("#more-channels").hidden = all;
}

function setupInputs() {
  const select = $("#class-select");
  state.run.classes.forEach((name, k) => select.append(el("option", { value: k, text: name })));
  $("#test-index").max = state.run.test_images - 1;
  const showTest = guard(() => loadInput({ test: Number($("#test-index").value) }));
  $("#show-test").addEventListener("click", showTest);
  $("#test-index").addEventListener("change", showTest);
  const next = guard(async (query) => {
    const after = "test" in state.source ? state.source.test : -1;
    const found = await api(`/api/find?${query}&after=${after}`);
    $("#test-index").value = found.index;
    await loadInput({ test: found.index });
  });
  $("#next-class").addEventListener("click", () => next(`kind=class&class=${select.value}`));
  $("#next-wrong").addEventListener("click", () => next("kind=misclassified"));
  $("#upload").addEventListener("change", guard(async (e) => {
    const file = e.target.files[0];
    if (file) await uploadImage(file, file.type || "image/png");
  }));
  $("#more-channels").addEventListener("click", guard(() => {
    state.maxChannels = Math.min(512, state.maxChannels * 2);
    return loadInput(state.source);
  }));
  setupCanvas();
}

async function uploadImage(blob, type) {
  const response = await fetch("/api/upload", { method: "POST", headers: { "Content-Type": type }, body: blob });
  const answer = await response.json();
  if (!response.ok) { showError(answer.error); return; }
  state.inverted = answer.inverted;
  await loadInput({ pixels: answer.pixels });
}

// Drawing: white strokes on black, as MNIST-like images are; the server converts it as `predict` does.
function setupCanvas() {
  const canvas = $("#draw");
  const ctx = canvas.getContext("2d");
  const clear = () => { ctx.fillStyle = "#000"; ctx.fillRect(0, 0, canvas.width, canvas.height); };
  clear();
  let drawing = false, last = null;
  const point = (e) => {
    const r = canvas.getBoundingClientRect();
    return [(e.clientX - r.left) * canvas.width / r.width, (e.clientY - r.top) * canvas.height / r.height];
  };
  canvas.addEventListener("pointerdown", (e) => { drawing = true; last = point(e); canvas.setPointerCapture(e.pointerId); });
  canvas.addEventListener("pointermove", (e) => {
    if (!drawing) return;
    const p = point(e);
    ctx.strokeStyle = "#fff"; ctx.lineWidth = 16; ctx.lineCap = "round"; ctx.lineJoin = "round";
    ctx.beginPath(); ctx.moveTo(...last); ctx.lineTo(...p); ctx.stroke();
    last = p;
  });
  const stop = () => { if (drawing) { drawing = false; classifyDrawing(); } };
  canvas.addEventListener("pointerup", stop);
  canvas.addEventListener("pointerleave", stop);
  $("#draw-clear").addEventListener("click", clear);
  $("#draw-use").addEventListener("click", classifyDrawing);
}

function classifyDrawing() {
  $("#draw").toBlob((blob) => guard(uploadImage)(blob, "image/png"), "image/png");
}

// ---------------------------------------------------------------- one number

// Why ``unit`` names no output of ``layer`` (in words for the reader), or null when it does.
function unitProblem(layer, unit) {
  const info = state.run.layers[layer];
  const names = (info.shape.length === 3 ? ["name_channel", "name_row", "name_column"] : ["name_unit"]).map((k) => t(k));
  const name = layerName(info);
  if (!Array.isArray(unit) || unit.length !== info.shape.length || !unit.every(Number.isInteger)) {
    return t("unit_form", { layer, name, shape: info.shape.join(" × "), names: `[${names.join(", ")}]`,
      example: info.shape.map(() => 0).join(",") });
  }
  for (let d = 0; d < unit.length; d++) {
    if (unit[d] < 0 || unit[d] >= info.shape[d]) {
      return t("unit_range", { what: names[d], value: unit[d], layer, name, max: info.shape[d] - 1 });
    }
  }
  return null;
}

async function explainUnit(layer, unit) {
  const described = state.run.layers[layer];
  if (!described.explained) {
    showError(t("not_explained", { layer, name: layerName(described), kind: kindName(described.kind) }));
    return;
  }
  const problem = unitProblem(layer, unit);
  if (problem) { showError(problem); return; }
  showError("");
  state.unit = { layer, unit };
  selectTab("number");
  $("#unit-layer").value = String(layer);
  $("#unit-index").value = unit.join(",");
  const answer = await loading($("#number-view"), "explain", t("loading"), async () => {
    if (described.shape.length === 3 && unit[0] >= state.forward.layers[layer].values.length) {
      state.maxChannels = Math.min(512, Math.max(state.maxChannels, unit[0] + 1));
      await loadInput(state.source);
    }
    return api("/api/explain", { input: state.source, layer, unit });
  });
  if (!answer) return;
  state.explanation = answer;
  renderExplanation();
}

// Move the explained unit one position (rows for up and down, columns or the index for left and
// right) from the last one asked for, so that quick steps add up; at the edge of the map it stays.
function stepUnit(dRow, dCol) {
  if (!state.explanation || !state.unit) return null;
  const e = state.unit;
  const shape = state.run.layers[e.layer].shape;
  let unit;
  if (shape.length === 3) unit = [e.unit[0], clamp(e.unit[1] + dRow, 0, shape[1] - 1), clamp(e.unit[2] + dCol, 0, shape[2] - 1)];
  else unit = [clamp(e.unit[0] + dCol, 0, shape[0] - 1)];
  if (unit.every((v, d) => v === e.unit[d])) return null;
  return explainUnit(e.layer, unit);
}

function setupStepper() {
  const moves = { left: [0, -1], right: [0, 1], up: [-1, 0], down: [1, 0] };
  for (const [name, [dr, dc]] of Object.entries(moves)) $(`#step-${name}`).addEventListener("click", guard(() => stepUnit(dr, dc)));
  const keys = { ArrowLeft: moves.left, ArrowRight: moves.right, ArrowUp: moves.up, ArrowDown: moves.down };
  document.addEventListener("keydown", (event) => {
    if (!keys[event.key] || !$("#tab-number").classList.contains("active") || !state.explanation) return;
    if (event.altKey || event.ctrlKey || event.metaKey || /^(INPUT|SELECT|TEXTAREA)$/.test(event.target.tagName)) return;
    event.preventDefault();
    guard(() => stepUnit(...keys[event.key]))();
  });
}

function numberTable(rows, { mark = null, padded = null, cls = "" } = {}) {
  const table = el("table", { class: `numbers ${cls}` });
  rows.forEach((row, i) => {
    const tr = el("tr");
    row.forEach((v, j) => {
      const td = el("td", { text: v === null ? t("pad") : fmt(v, 3), "data-i": i, "data-j": j });
      if (padded && padded(i, j)) td.className = "pad";
      if (mark && mark(v, i, j)) td.classList.add("mark");
      tr.append(td);
    });
    table.append(tr);
  });
  return table;
}

function unitMapValue(e) {
  const values = state.forward.layers[e.layer].values;
  return e.unit.length === 3 ? values[e.unit[0]][e.unit[1]][e.unit[2]] : values[e.unit[0]];
}

function stepText(step) {
  const x = fmt(step.input, 6), y = fmt(step.output, 6);
  if (step.op === "batch norm") {
    return t("step_bn", { x: fmt(step.input), mean: signed(step.mean), var: fmt(step.var), eps: step.eps,
      w: signed(step.weight), b: signed(step.bias), y });
  }
  if (step.op.startsWith("dropout")) return t("step_dropout", { x, y });
  const formulas = { relu: "max(0, x)", sigmoid: "1 / (1 + e^−x)", tanh: "tanh(x)" };
  return formulas[step.op] ? t("step_activation_f", { op: step.op, formula: formulas[step.op], x, y })
    : t("step_activation", { op: partName({ op: step.op }), x, y });
}

function renderExplanation() {
  const e = state.explanation;
  const box = $("#explanation");
  box.replaceChildren();
  const info = state.run.layers[e.layer];
  const name = layerName(info);
  const mapValue = unitMapValue(e);
  box.append(el("h2", { text: e.unit.length === 3
    ? t("unit_title_3d", { layer: e.layer, name, c: e.unit[0], i: e.unit[1], j: e.unit[2] })
    : t("unit_title_1d", { layer: e.layer, name, k: e.unit[0] }) }));
  $("#stepper").hidden = false;
  $("#step-up").disabled = $("#step-down").disabled = e.unit.length !== 3;
  $("#unit-map-title").textContent = t(e.unit.length === 3 ? "feature_map" : "output_vector");
  drawUnitMap(e);
  if (e.kind === "dense") drawInputVector(e);
  else drawLayerInput(e, e.kind === "pool" ? e.channel : 0);
  if (e.kind === "conv") renderConv(e, box);
  else if (e.kind === "pool") renderPool(e, box);
  else renderDense(e, box);
  if (e.kind !== "pool") {
    const bias = e.has_bias ? t("plus_bias", { b: signed(e.bias, 6), z: fmt(e.z, 6) }) : t("no_bias");
    box.append(el("p", { class: "result" }, t("sum_of_products"), el("strong", { id: "explain-sum", text: fmt(e.sum, 6) }), bias));
  }
  const steps = el("ol", { class: "steps" });
  e.steps.forEach((s) => steps.append(el("li", { text: stepText(s) })));
  if (e.steps.length) box.append(el("p", { text: t("then_each") }), steps);
  const equal = Math.abs(e.value - mapValue) <= 1e-5 * Math.max(1, Math.abs(mapValue));
  box.append(el("p", { class: `final ${equal ? "ok" : "bad"}` }, t("result"),
    el("strong", { id: "explain-value", text: fmt(e.value, 6) }), t(e.unit.length === 3 ? "map_holds" : "vector_holds"),
    el("strong", { id: "explain-map-value", text: fmt(mapValue, 6) }), t(equal ? "same_number" : "they_differ")));
}

function renderConv(e, box) {
  const [oy, ox] = e.origin;
  const [H, W] = e.input_size;
  const isPad = (i, j) => oy + i < 0 || ox + j < 0 || oy + i >= H || ox + j >= W;
  box.append(el("p", { class: "lead", text: t("conv_lead", { k: e.kernel_size.join("×"), c: e.unit[0], oy, ox,
    p: e.padding.join("×"), s: e.stride.join("×"), n: e.window.length }) }));
  box.append(el("p", { class: "lead xcorr", text: t("xcorr_note") }));
  const grid = el("div", { class: "channels" });
  const shown = Math.min(e.window.length, 8);
  for (let c = 0; c < shown; c++) {
    const note = el("div", { class: "product-note", text: t("hover_hint") });
    const block = el("div", { class: "channel", "data-channel": c },
      el("h4", { text: t("input_channel", { c }) }),
      el("div", { class: "triple" },
        el("div", {}, el("h5", { text: t("window") }), numberTable(e.window[c], { padded: isPad, cls: "window" })),
        el("div", { class: "op", text: "×" }),
        el("div", {}, el("h5", { text: t("kernel") }), numberTable(e.kernel[c], { cls: "kernel" })),
        el("div", { class: "op", text: "=" }),
        el("div", {}, el("h5", { text: t("products") }), numberTable(e.products[c], { cls: "products" }))),
      el("div", { class: "channel-sum", text: t("channel_sum", { v: fmt(e.channel_sums[c], 6) }) }), note);
    // Hovering a product lights the window cell and kernel cell it multiplies, and its place in the input.
    const light = (i, j, on) => {
      block.querySelectorAll(`td[data-i="${i}"][data-j="${j}"]`).forEach((td) => td.classList.toggle("lit", on));
      if (!on) { note.textContent = t("hover_hint"); drawLayerInput(e, c); return; }
      const params = { i: oy + i, j: ox + j, x: fmt(e.window[c][i][j], 3), w: fmt(e.kernel[c][i][j], 3), p: fmt(e.products[c][i][j], 3) };
      note.textContent = t(isPad(i, j) ? "product_pad" : "product_at", params);
      drawLayerInput(e, c, [oy + i, ox + j]);
    };
    block.querySelectorAll("td").forEach((td) => {
      const i = Number(td.dataset.i), j = Number(td.dataset.j);
      td.addEventListener("mouseenter", () => light(i, j, true));
      td.addEventListener("mouseleave", () => light(i, j, false));
    });
    block.addEventListener("click", () => drawLayerInput(e, c));
    grid.append(block);
  }
  box.append(grid);
  if (shown < e.window.length) {
    const rest = e.channel_sums.slice(shown).reduce((a, b) => a + b, 0);
    box.append(el("p", { text: t("more_channels_sum", { n: e.window.length - shown, v: fmt(rest, 6) }) }));
  }
}

function renderPool(e, box) {
  const flat = e.window.flat().filter((v) => v !== null);
  const best = Math.max(...flat);
  const max = e.mode === "max";
  box.append(el("p", { class: "lead", text: t("pool_lead", { k: e.kernel_size.join("×"), s: e.stride.join("×"), c: e.channel,
    oy: e.origin[0], ox: e.origin[1], what: t(max ? "maximum" : "mean") }) }));
  const table = numberTable(e.window, { mark: (v) => max && v === best, cls: "window" });
  const note = el("div", { class: "product-note" });
  table.querySelectorAll("td").forEach((td) => {
    const i = Number(td.dataset.i), j = Number(td.dataset.j);
    td.addEventListener("mouseenter", () => {
      td.classList.add("lit");
      note.textContent = t("pool_cell", { i: e.origin[0] + i, j: e.origin[1] + j, x: td.textContent });
      drawLayerInput(e, e.channel, [e.origin[0] + i, e.origin[1] + j]);
    });
    td.addEventListener("mouseleave", () => { td.classList.remove("lit"); note.textContent = ""; drawLayerInput(e, e.channel); });
  });
  box.append(table, note);
  box.append(el("p", { class: "result", text: t(max ? "pool_max" : "pool_mean") },
    el("strong", { id: "explain-sum", text: fmt(e.result, 6) })));
}

function renderDense(e, box) {
  box.append(el("p", { class: "lead", text: t("dense_lead", { n: e.inputs, k: e.top.length }) }));
  const table = el("table", { class: "numbers contributions" },
    el("tr", {}, el("th", { text: t("col_input") }), el("th", { text: t("col_value") }), el("th", { text: t("col_weight") }),
      el("th", { text: t("col_product") })));
  const prev = state.run.layers[e.layer - 1];
  e.top.forEach((c) => {
    let name = String(c.input);
    if (prev && prev.kind === "flatten" && prev.input_shape.length === 3) {
      const [, h, w] = prev.input_shape;
      name += t("flat_position", { c: Math.floor(c.input / (h * w)), i: Math.floor((c.input % (h * w)) / w), j: c.input % w });
    }
    const row = el("tr", { "data-input": c.input }, el("td", { text: name }), el("td", { text: fmt(c.value) }),
      el("td", { text: fmt(c.weight) }), el("td", { text: fmt(c.product, 5) }));
    row.addEventListener("mouseenter", () => { row.classList.add("lit"); drawInputVector(e, c.input); });
    row.addEventListener("mouseleave", () => { row.classList.remove("lit"); drawInputVector(e); });
    table.append(row);
  });
  if (e.rest_count) table.append(el("tr", {}, el("td", { text: t("the_other", { n: e.rest_count }) }), el("td"), el("td"), el("td", { text: fmt(e.rest, 5) })));
  box.append(table);
}

function drawUnitMap(e) {
  const layer = state.forward.layers[e.layer];
  const canvas = $("#unit-map");
  const scale = Math.max(Math.abs(layer.min), Math.abs(layer.max), 1e-12);
  const ctx = canvas.getContext("2d");
  if (e.unit.length === 3) {
    const map = layer.values[e.unit[0]];
    const cell = Math.max(4, Math.floor(224 / map[0].length));
    drawGrid(canvas, map, { scale, cell });
    ctx.strokeStyle = "#d00"; ctx.lineWidth = 2;
    ctx.strokeRect(e.unit[2] * cell + 1, e.unit[1] * cell + 1, cell - 2, cell - 2);
    canvas.onclick = guard((ev) => explainUnit(e.layer, [e.unit[0], ...cellAt(canvas, ev, map.length, map[0].length)]));
  } else {
    const { rows, cols } = vectorRows(layer.values);
    const cell = Math.max(6, Math.min(24, Math.floor(224 / cols)));
    drawGrid(canvas, rows, { scale, cell });
    ctx.strokeStyle = "#d00"; ctx.lineWidth = 2;
    ctx.strokeRect((e.unit[0] % cols) * cell + 1, Math.floor(e.unit[0] / cols) * cell + 1, cell - 2, cell - 2);
    canvas.onclick = guard((ev) => {
      const [i, j] = cellAt(canvas, ev, rows.length, cols);
      if (i * cols + j < layer.values.length) return explainUnit(e.layer, [i * cols + j]);
    });
  }
}

const LIT = "rgb(255,0,255)";     // the input position of the hovered product

function hideInput(canvas, note, text) {
  canvas.width = 1; canvas.height = 1; canvas.style.width = "0px";
  note.textContent = text;
}

// The layer's input channel, its zero padding as a gray border, the unit's window in red and the
// neighbouring window positions (one stride apart) dashed; ``lit`` ([row, column] of the input, padding
// negative) is outlined in magenta.
function drawLayerInput(e, channel, lit = null) {
  const canvas = $("#unit-input");
  const ctx = canvas.getContext("2d");
  const note = $("#input-note");
  $("#unit-input-title").textContent = t("layer_input");
  let map = null;
  if (e.layer === 0) map = state.forward.input[channel];
  else {
    const prev = state.forward.layers[e.layer - 1];
    if (prev.shape.length === 3 && channel < prev.values.length) map = prev.values[channel];
  }
  if (!map) { hideInput(canvas, note, ""); return; }
  const [ph, pw] = e.padding;
  const H = map.length, W = map[0].length;
  const zoom = Math.max(4, Math.floor(224 / (W + 2 * pw)));
  const padded = [];
  for (let i = -ph; i < H + ph; i++) {
    const row = [];
    for (let j = -pw; j < W + pw; j++) row.push(i < 0 || j < 0 || i >= H || j >= W ? null : map[i][j]);
    padded.push(row);
  }
  const scale = Math.max(1e-12, ...map.flat().map(Math.abs));
  canvas.width = (W + 2 * pw) * zoom;
  canvas.height = (H + 2 * ph) * zoom;
  canvas.style.width = `${canvas.width}px`;
  canvas.style.height = `${canvas.height}px`;
  canvas.dataset.zoom = zoom;
  padded.forEach((row, i) => row.forEach((v, j) => {
    const c = v === null ? [200, 200, 200] : (e.layer === 0 ? [255 * v / scale, 255 * v / scale, 255 * v / scale] : colour(v, scale));
    ctx.fillStyle = rgb(c);
    ctx.fillRect(j * zoom, i * zoom, zoom, zoom);
  }));
  if (ph || pw) {
    ctx.strokeStyle = "#888"; ctx.setLineDash([]); ctx.lineWidth = 1;
    ctx.strokeRect(pw * zoom + 0.5, ph * zoom + 0.5, W * zoom - 1, H * zoom - 1);
  }
  const [kh, kw] = e.kernel_size;
  const [sh, sw] = e.stride;
  const [oy, ox] = [e.origin[0] + ph, e.origin[1] + pw];
  ctx.strokeStyle = "rgba(0, 120, 0, 0.9)"; ctx.setLineDash([3, 3]); ctx.lineWidth = 1;
  for (const [dy, dx] of [[0, sw], [sh, 0], [0, -sw], [-sh, 0]]) {
    const y = oy + dy, x = ox + dx;
    if (y >= 0 && x >= 0 && y + kh <= H + 2 * ph && x + kw <= W + 2 * pw) ctx.strokeRect(x * zoom + 0.5, y * zoom + 0.5, kw * zoom - 1, kh * zoom - 1);
  }
  ctx.setLineDash([]); ctx.strokeStyle = "#d00"; ctx.lineWidth = 2;
  ctx.strokeRect(ox * zoom + 1, oy * zoom + 1, kw * zoom - 2, kh * zoom - 2);
  if (lit) {
    ctx.strokeStyle = LIT; ctx.lineWidth = 3;
    ctx.strokeRect((lit[1] + pw) * zoom + 1.5, (lit[0] + ph) * zoom + 1.5, zoom - 3, zoom - 3);
    canvas.dataset.lit = lit.join(",");
    canvas.dataset.channel = channel;
  } else delete canvas.dataset.lit;
  const padding = ph || pw ? t("input_note_padding", { p: `${ph}×${pw}` }) : "";
  note.textContent = t("input_note_window", { c: channel, padding, s: `${sh}×${sw}` });
}

// A dense unit's input: the vector it multiplies by its weights, the largest products' inputs in red and
// ``lit`` (an input's index) in magenta.
function drawInputVector(e, lit = null) {
  const canvas = $("#unit-input");
  const note = $("#input-note");
  $("#unit-input-title").textContent = t("input_vector");
  let values = null;
  if (e.layer === 0) values = state.forward.input.flat(2);
  else {
    const prev = state.forward.layers[e.layer - 1];
    if (prev.shape.length === 1) values = prev.values;
    else if (prev.values.length === prev.shape[0]) values = prev.values.flat(2);
  }
  if (!values) { hideInput(canvas, note, ""); return; }
  const { rows, cols } = vectorRows(values);
  const cell = Math.max(6, Math.min(24, Math.floor(224 / cols)));
  drawGrid(canvas, rows, { cell });
  const ctx = canvas.getContext("2d");
  const outline = (k, colourName, width) => {
    ctx.strokeStyle = colourName; ctx.lineWidth = width;
    ctx.strokeRect((k % cols) * cell + width / 2, Math.floor(k / cols) * cell + width / 2, cell - width, cell - width);
  };
  e.top.forEach((c) => outline(c.input, "#d00", 1));
  if (lit !== null) { outline(lit, LIT, 3); canvas.dataset.lit = String(lit); } else delete canvas.dataset.lit;
  note.textContent = t("input_note_vector", { n: values.length, k: e.top.length });
}

function setupUnitChooser() {
  $("#unit-show").addEventListener("click", guard(() => {
    const unit = $("#unit-index").value.split(",").map((v) => (v.trim() === "" ? NaN : Number(v.trim())));
    return explainUnit(Number($("#unit-layer").value), unit);
  }));
  fillUnitChooser();
}

function fillUnitChooser() {
  const select = $("#unit-layer");
  const chosen = select.value;
  select.replaceChildren(...state.run.layers.filter((l) => l.explained).map((l) =>
    el("option", { value: l.index, text: `${l.index}. ${layerName(l)} (${l.shape.join("×")})` })));
  if (chosen) select.value = chosen;
}

// ---------------------------------------------------------------- playground

const BOOK_X = Array.from({ length: 6 }, () => [1, 1, 0, 0, 0, 0, 1, 1]);
const PRESETS = {
  book: [[1, -1]],
  vertical: [[1, 0, -1], [2, 0, -2], [1, 0, -1]],
  horizontal: [[1, 2, 1], [0, 0, 0], [-1, -2, -1]],
  blur: [[1 / 9, 1 / 9, 1 / 9], [1 / 9, 1 / 9, 1 / 9], [1 / 9, 1 / 9, 1 / 9]],
  sharpen: [[0, -1, 0], [-1, 5, -1], [0, -1, 0]],
  identity: [[0, 0, 0], [0, 1, 0], [0, 0, 0]],
};

function setKernel(kernel) {
  $("#k-rows").value = kernel.length;
  $("#k-cols").value = kernel[0].length;
  buildKernelGrid(kernel);
  return runPlayground();
}

function buildKernelGrid(kernel) {
  const grid = $("#kernel-grid");
  grid.replaceChildren();
  kernel.forEach((row, i) => {
    const line = el("div", { class: "krow" });
    row.forEach((v, j) => {
      const input = el("input", { type: "number", step: "0.1", value: String(Math.round(v * 1000) / 1000), "data-i": i, "data-j": j });
      input.addEventListener("input", guard(runPlayground));
      line.append(input);
    });
    grid.append(line);
  });
}

function readKernel() {
  const rows = Number($("#k-rows").value), cols = Number($("#k-cols").value);
  const kernel = Array.from({ length: rows }, () => Array(cols).fill(0));
  document.querySelectorAll("#kernel-grid input").forEach((input) => {
    const v = Number(input.value);
    kernel[Number(input.dataset.i)][Number(input.dataset.j)] = Number.isFinite(v) ? v : 0;
  });
  return kernel;
}

async function runPlayground() {
  const book = document.querySelector("input[name=pg-source]:checked").value === "book";
  const input = book ? { pixels: BOOK_X } : state.source;
  const padding = Number($("#pg-padding").value), stride = Number($("#pg-stride").value);
  const kernel = readKernel();
  const answer = await loading($("#pg-view"), "playground", t("loading"), () => api("/api/playground", { input, kernel, padding, stride }));
  if (!answer) return;
  state.playground = { answer, image: book ? BOOK_X : state.forward.input[0], book };
  renderPlayground();
}

function renderPlayground() {
  const { answer, image, book } = state.playground;
  drawGrid($("#pg-input"), image, { scale: 1, gray: true, zoom: book ? 28 : 6 });
  drawGrid($("#pg-output"), answer.output, { zoom: Math.max(1, Math.floor(168 / answer.shape[1])) });
  $("#pg-shape").textContent = answer.shape.join(" × ");
  const lines = answer.formula.map((f, d) =>
    t("labelled", { label: t(d === 0 ? "rows_label" : "columns_label"),
      text: `⌊(n − k + p + s) / s⌋ = ⌊(${f.n} − ${f.k} + ${f.p} + ${f.s}) / ${f.s}⌋ = ${f.out}` }));
  $("#formula").replaceChildren(el("div", { id: "pg-formula" }, ...lines.map((l) => el("div", { text: l }))),
    el("div", { class: "hint", text: t("formula_hint") }));
  const numbers = $("#pg-numbers");
  numbers.replaceChildren();
  if (answer.shape[0] <= 12 && answer.shape[1] <= 16) numbers.append(el("h3", { text: t("output_values") }), numberTable(answer.output));
}

function setupPlayground() {
  for (const id of ["#k-rows", "#k-cols"]) {
    for (let k = 1; k <= 5; k++) $(id).append(el("option", { value: k, text: k }));
  }
  const resize = guard(() => {
    const old = readKernel();
    const rows = Number($("#k-rows").value), cols = Number($("#k-cols").value);
    buildKernelGrid(Array.from({ length: rows }, (_, i) => Array.from({ length: cols }, (_, j) => (old[i] && old[i][j]) || 0)));
    return runPlayground();
  });
  $("#k-rows").addEventListener("change", resize);
  $("#k-cols").addEventListener("change", resize);
  document.querySelectorAll("[data-preset]").forEach((b) => b.addEventListener("click", guard(() => setKernel(PRESETS[b.dataset.preset]))));
  document.querySelectorAll("input[name=pg-source], #pg-padding, #pg-stride").forEach((i) => i.addEventListener("input", guard(runPlayground)));
  $("#k-rows").value = 1; $("#k-cols").value = 2;
  buildKernelGrid(PRESETS.book);
}

// ---------------------------------------------------------------- training

function heldOut(tr) {
  return tr.points.some((p) => p.val_acc !== null && p.val_acc !== undefined) ? "val_acc" : "test_acc";
}

// What an accuracy of metrics.csv measured: its split, and the test-time augmentation the run scored it with.
function accuracyName(key, tta) {
  return t(key === "val_acc" ? "acc_validation" : "acc_test") + (tta && tta !== "none" ? t("with_tta", { tta }) : "");
}

// Ticks at round numbers (1, 2, 2.5 or 5 times a power of ten) from 0 to at least ``top``.
function niceTicks(top, count = 5) {
  const raw = Math.max(top, 1e-9) / count;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].find((m) => m * power >= raw - 1e-12) * power;
  const decimals = Math.max(0, -Math.floor(Math.log10(step) + 1e-9)) + (String(step / power).includes(".") ? 1 : 0);
  const ticks = [];
  for (let k = 0; k * step < top + step - 1e-9; k++) ticks.push(k * step);
  return { ticks, decimals, top: ticks[ticks.length - 1] };
}

function drawCurves(tr) {
  const svg = $("#curves");
  svg.replaceChildren();
  const W = 760, H = 330, L = 64, R = 64, T = 16, B = 50;
  const series = [["train_loss", t("train_loss"), "#1f77b4", "loss"], ["train_acc", t("train_accuracy"), "#d62728", "accuracy"],
    ["val_acc", accuracyName("val_acc", tr.tta), "#ff7f0e", "accuracy"], ["test_acc", accuracyName("test_acc", tr.tta), "#2ca02c", "accuracy"]]
    .filter(([key]) => tr.points.some((p) => p[key] !== null && p[key] !== undefined) || key === "train_loss" || key === "train_acc");
  const last = tr.points.length ? tr.points[tr.points.length - 1].epoch : 1;
  const xmax = Math.max(1, tr.epochs_planned || 0, Math.ceil(last));
  const lossTop = Math.max(1e-6, ...tr.points.map((p) => p.train_loss ?? 0));
  const loss = niceTicks(lossTop), acc = { ticks: [0, 0.2, 0.4, 0.6, 0.8, 1], decimals: 1, top: 1 };
  const x = (e) => L + (e / xmax) * (W - L - R);
  const y = (v, axis) => T + (1 - v / axis.top) * (H - T - B);
  const axes = { loss, accuracy: acc };
  const g = (attrs) => svg.appendChild(svgEl("g", attrs));
  const grid = g({ class: "grid" });
  loss.ticks.forEach((v) => grid.append(svgEl("line", { x1: L, x2: W - R, y1: y(v, loss), y2: y(v, loss) })));
  const frame = g({ class: "frame" });
  frame.append(svgEl("line", { x1: L, x2: L, y1: T, y2: H - B }), svgEl("line", { x1: W - R, x2: W - R, y1: T, y2: H - B }),
    svgEl("line", { x1: L, x2: W - R, y1: H - B, y2: H - B }));
  const ticks = g({ class: "ticks" });
  loss.ticks.forEach((v) => ticks.append(svgEl("text", { x: L - 6, y: y(v, loss) + 4, "text-anchor": "end", "data-axis": "loss" }, v.toFixed(loss.decimals))));
  acc.ticks.forEach((v) => ticks.append(svgEl("text", { x: W - R + 6, y: y(v, acc) + 4, "text-anchor": "start", "data-axis": "accuracy" }, v.toFixed(acc.decimals))));
  const xstep = niceTicks(xmax, Math.min(10, xmax)).ticks[1] || 1;
  for (let e = 0; e <= xmax + 1e-9; e += Math.max(1, Math.round(xstep))) {
    ticks.append(svgEl("text", { x: x(e), y: H - B + 18, "text-anchor": "middle", "data-axis": "epoch" }, String(e)));
  }
  const titles = g({ class: "axis-titles" });
  titles.append(svgEl("text", { x: (L + W - R) / 2, y: H - 8, "text-anchor": "middle", "data-title": "epoch" }, t("axis_epoch")),
    svgEl("text", { x: 16, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(-90 16 ${(T + H - B) / 2})`, "data-title": "loss" }, t("axis_loss")),
    svgEl("text", { x: W - 14, y: (T + H - B) / 2, "text-anchor": "middle", transform: `rotate(90 ${W - 14} ${(T + H - B) / 2})`, "data-title": "accuracy" }, t("axis_accuracy")));
  const legend = $("#curves-legend");
  legend.replaceChildren();
  series.forEach(([key, name, colourName, axis]) => {
    const pts = tr.points.filter((p) => p[key] !== null && p[key] !== undefined);
    const dashed = key === "test_acc" || key === "val_acc";
    const line = svgEl("polyline", { "data-series": key, stroke: colourName, fill: "none", "stroke-width": 2,
      points: pts.map((p) => `${x(p.epoch).toFixed(1)},${y(p[key], axes[axis]).toFixed(1)}`).join(" ") });
    if (dashed) line.setAttribute("stroke-dasharray", "6 4");
    svg.append(line);
    pts.forEach((p) => svg.append(svgEl("circle", { cx: x(p.epoch), cy: y(p[key], axes[axis]), r: 2.5, fill: colourName })));
    const swatch = el("span", { class: `swatch-line${dashed ? " dashed" : ""}` });
    swatch.style.borderTopColor = colourName;
    legend.append(el("span", { class: "legend-item", "data-series": key }, swatch, el("span", { text: t("series_on_axis", { name, axis: t(`axis_${axis}`) }) })));
  });
}

async function loadTraining(showLoading = true) {
  const request = () => api("/api/training");
  const answer = showLoading ? await loading($("#curves-box"), "training", t("loading"), request) : await request();
  if (!answer) return;
  state.training = answer;
  renderTraining();
  if (state.evaluation) renderEvaluation();      // its note on test-time augmentation needs the run's setting
  clearTimeout(state.polling);
  if (!answer.finished) {
    state.polling = setTimeout(guard(() => {
      if ($("#tab-training").classList.contains("active")) return Promise.all([loadTraining(false), loadEvaluation(false)]);
    }), 3000);
  }
}

function renderTraining() {
  const tr = state.training;
  drawCurves(tr);
  const planned = tr.epochs_planned ? t("of_planned", { n: tr.epochs_planned }) : "";
  const key = heldOut(tr);
  const last = tr.points.filter((p) => p[key] !== null).pop();
  const acc = last ? t("acc_part", { name: accuracyName(key, tr.tta), v: fmt(last[key], 3) }) : "";
  const age = tr.seconds_since_update === null ? "" : t("age", { s: Math.round(tr.seconds_since_update) });
  $("#training-status").textContent = tr.finished
    ? t("finished", { epochs: t("epochs", { n: tr.epochs_done }), acc })
    : t("not_finished", { done: tr.epochs_done, planned, acc, age });
}

async function loadEvaluation(showLoading = true) {
  const request = () => api("/api/evaluation");
  const answer = showLoading ? await loading($("#evaluation-box"), "evaluation", t("loading"), request) : await request();
  if (!answer) return;
  state.evaluation = answer;
  renderEvaluation();
}

function renderEvaluation() {
  const ev = state.evaluation;
  const classes = ev.classes;
  const split = t(ev.split === "val" ? "split_val" : "split_test");
  const tta = state.training && state.training.tta && state.training.tta !== "none";
  $("#per-class-title").textContent = t("per_class_title", { split });
  $("#confusion-title").textContent = t("confusion_title", { split });
  const per = $("#per-class");
  per.replaceChildren();
  ev.per_class.forEach((a, k) => {
    const bar = el("div", { class: "bar-fill" });
    bar.style.width = `${Math.round(100 * a)}%`;
    per.append(el("div", { class: "bar" }, el("span", { class: "bar-name", text: classes[k] }), el("div", { class: "bar-track" }, bar),
      el("span", { class: "bar-value", text: fmt(a, 3) })));
  });
  per.append(el("div", { class: "overall", text: t("overall", { split, v: fmt(ev.accuracy, 3) }) + (tta ? t("overall_no_tta") : "") }));
  const table = $("#confusion");
  table.replaceChildren();
  if (ev.confusion === null) {               // too many classes for a table: the most frequent confusions
    table.append(el("caption", { class: "confused-note", text: t("confused_note", { k: classes.length, n: ev.confused.length, m: ev.confused_cells }) }));
    ev.confused.forEach(({ true: tc, predicted: p, count: n }) => {
      const td = el("td", { text: t("confused_row", { t: classes[tc], p: classes[p], n }), "data-true": tc, "data-predicted": p });
      td.addEventListener("click", guard(() => showCell(tc, p)));
      table.append(el("tr", {}, td));
    });
    return;
  }
  const head = el("tr", {}, el("th"));
  classes.forEach((c) => head.append(el("th", { class: "rot", text: c })));
  table.append(head);
  ev.confusion.forEach((row, tc) => {
    const total = Math.max(1, row.reduce((a, b) => a + b, 0));
    const tr = el("tr", {}, el("th", { text: classes[tc] }));
    row.forEach((n, p) => {
      const share = n / total;
      const td = el("td", { text: String(n), title: t("cell_title", { t: classes[tc], p: classes[p], n }), "data-true": tc, "data-predicted": p });
      const c = tc === p ? [40, 140, 60] : [200, 60, 20];
      td.style.background = n ? `rgba(${c[0]},${c[1]},${c[2]},${Math.min(1, 0.1 + share)})` : "#fff";
      if (share > 0.5) td.style.color = "#fff";
      td.addEventListener("click", guard(() => showCell(tc, p)));
      tr.append(td);
    });
    table.append(tr);
  });
}

async function showCell(tc, p) {
  state.cell = await api(`/api/cell?true=${tc}&predicted=${p}`);
  renderCell();
}

function renderCell() {
  const cell = state.cell;
  const box = $("#cell-images");
  const classes = state.run.classes;
  const first = cell.count > cell.indices.length ? t("cell_first", { k: cell.indices.length }) : "";
  box.replaceChildren(el("h3", { text: t("cell_images", { t: classes[cell.true], p: classes[cell.predicted], n: cell.count }) + first + t("cell_click") }));
  const grid = el("div", { class: "thumbs" });
  cell.indices.forEach((index, k) => {
    const canvas = el("canvas");
    drawGrid(canvas, cell.images[k], { scale: 255, gray: true, zoom: 2 });
    const item = el("figure", { title: t("test_image_n", { n: index }) }, canvas, el("figcaption", { text: String(index) }));
    item.addEventListener("click", guard(() => { $("#test-index").value = index; selectTab("network"); return loadInput({ test: index }); }));
    grid.append(item);
  });
  box.append(grid);
}

// ---------------------------------------------------------------- language, tabs and start

function renderRunInfo() {
  const r = state.run;
  const progress = r.complete ? t("epochs", { n: r.epochs_done })
    : t("training_progress", { done: r.epochs_done, planned: r.epochs_planned ? t("of_planned", { n: r.epochs_planned }) : "" });
  $("#run-info").textContent = t("run_info", { model: r.model, dataset: r.dataset, progress, run: r.run });
}

// Every word on the page in ``language`` (en or zh): the fixed ones from the HTML, and whatever is shown
// drawn again from the answers already here, without asking the server again.
function setLanguage(language) {
  lang = language;
  document.documentElement.lang = lang === "zh" ? "zh-CN" : "en";
  document.querySelectorAll("[data-i18n]").forEach((node) => { node.textContent = t(node.dataset.i18n); });
  document.querySelectorAll("[data-i18n-title]").forEach((node) => { node.title = t(node.dataset.i18nTitle); });
  if (!state.run) return;
  renderRunInfo();
  fillUnitChooser();
  if (state.forward) renderNetwork();
  if (state.explanation) renderExplanation();
  if (state.playground) renderPlayground();
  if (state.training) renderTraining();
  if (state.evaluation) renderEvaluation();
  if (state.cell) renderCell();
}

function selectTab(name) {
  document.querySelectorAll("nav button").forEach((b) => b.classList.toggle("active", b.dataset.tab === name));
  document.querySelectorAll(".tab").forEach((s) => s.classList.toggle("active", s.id === `tab-${name}`));
  if (name === "playground") guard(runPlayground)();
  if (name === "training") { guard(loadTraining)(); guard(loadEvaluation)(); }
}

async function start() {
  setLanguage(browserLanguage());
  document.querySelectorAll("nav button").forEach((b) => b.addEventListener("click", () => selectTab(b.dataset.tab)));
  $("#lang").addEventListener("click", () => setLanguage(lang === "en" ? "zh" : "en"));
  drawLegend();
  state.run = await api("/api/run");
  renderRunInfo();
  setupInputs();
  setupUnitChooser();
  setupStepper();
  setupPlayground();
  await loadInput({ test: 0 });
  document.body.dataset.ready = "true";
}

start().catch((err) => showError(String(err.message || err)));
