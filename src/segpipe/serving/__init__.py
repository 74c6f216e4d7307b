"""Using a trained model outside the pipeline: prediction on new photos (with
sliding windows) and ONNX export. No stage imports this folder."""
