package com.facebook.jni;

/** Offline-build stand-in for fbjni's CppException (thrown by libfbjni.so for C++ exceptions). */
public class CppException extends RuntimeException {
    public CppException(String message) {
        super(message);
    }
}
