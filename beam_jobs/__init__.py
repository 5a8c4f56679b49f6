"""The Apache Beam preprocessing job behind `seqpipe preprocess` (`preprocess.run`)."""
