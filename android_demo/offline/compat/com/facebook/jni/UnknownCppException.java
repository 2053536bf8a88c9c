package com.facebook.jni;

/** Offline-build stand-in for fbjni's UnknownCppException. */
public class UnknownCppException extends CppException {
    public UnknownCppException() {
        super("Unknown");
    }

    public UnknownCppException(String message) {
        super(message);
    }
}
