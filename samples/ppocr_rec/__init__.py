"""The bundled sample: PP-OCRv4 text-line recognizer (from rapidocr-onnxruntime 1.4.4).

``prepare`` copies the model and renders labelled text lines (ground truth known) into
calibration and validation folders; ``preprocess`` turns a line image into the model input
the way RapidOCR does; ``metric`` decodes the CTC output and scores it as character error
rate, the task metric the validation stage reports.
"""
